"""The campaign's book of code variants: checked (and smoke-tested) once, recorded, restored,
applied to snapshots, and the base the next change builds on."""

from __future__ import annotations

import shutil
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from hybrid.space import SearchSpace
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Edit, Experiment, ExperimentState, Result
from hybrid.variant_book import VariantBook
from hybrid.variants import VariantRejected, make_variant

TRAIN = textwrap.dedent(
    """
    import json, os
    ACT = "relu"
    p = json.load(open("params.json")) if os.path.exists("params.json") else {"lr": 0.02}
    print(f"val_bpb: {1.0 + abs(p['lr'] - 0.02)}")
    """
)
SPACE = SearchSpace.from_config({"lr": {"type": "float", "low": 0.001, "high": 0.1, "default": 0.02}})
GELU = make_variant([Edit("train.py", 'ACT = "relu"', 'ACT = "gelu"')], "GeLU")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "tree"
    d.mkdir()
    (d / "train.py").write_text(TRAIN)
    return d


def book(tmp_path: Path, tree: Path, exps: list[Experiment] | None = None, **target) -> tuple[VariantBook, Store]:
    spec = TargetSpec.from_config({"name": "t", "command": "{python} train.py", "workdir": str(tree),
                                   "editable": ["train.py"], **target})
    store = Store(tmp_path / "runs" / "c" / "state.sqlite")
    return VariantBook(store, spec, SPACE, tmp_path / "runs" / "c", lambda: exps or []), store


def test_an_ok_variant_is_recorded_once_with_its_diff_file(tmp_path, tree):
    b, store = book(tmp_path, tree)
    built = b.check(GELU, "llm")
    assert b.check(GELU, "llm") is built
    (rec,) = store.variants()
    assert rec.ok and rec.source == "llm" and rec.variant == GELU
    diff = (tmp_path / "runs/c/variants" / f"{GELU.id}.diff").read_text()
    assert diff == built.diff and '+ACT = "gelu"' in diff
    assert [i.status for i in b.known()] == ["ok"] and b.files() == {"train.py": TRAIN}


def test_a_rejected_variant_keeps_its_reason_and_is_never_rechecked(tmp_path, tree):
    b, store = book(tmp_path, tree)
    bad = make_variant([Edit("train.py", "ACT = 'silu'", "ACT = 'gelu'")], "wrong quotes")
    with pytest.raises(VariantRejected, match="search text not found") as first:
        b.check(bad, "llm")
    (tree / "train.py").write_text(TRAIN.replace('"relu"', "'silu'"))  # now it would apply
    with pytest.raises(VariantRejected) as again:
        b.check(bad, "llm")
    assert str(again.value) == str(first.value)
    (rec,) = store.variants()
    assert not rec.ok and "search text not found" in rec.reason
    assert [(i.status, i.reason) for i in b.known()] == [("rejected", rec.reason)]
    assert not (tmp_path / "runs/c/variants" / f"{bad.id}.diff").exists()


def test_a_variant_on_a_rejected_or_unknown_parent_is_rejected(tmp_path, tree):
    b, _ = book(tmp_path, tree)
    child = make_variant([Edit("train.py", "gelu", "silu")], "SiLU on GeLU", parent="v0000000000")
    with pytest.raises(VariantRejected, match="parent v0000000000 is not a variant that may run"):
        b.check(child, "llm")


def test_the_smoke_command_runs_on_the_variants_code_without_the_orchestrators_key(tmp_path, tree, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-orchestrator")
    check = ("{python} -c \"import os, sys; src = open('train.py').read(); "
             "sys.exit(0 if 'gelu' in src and 'ANTHROPIC_API_KEY' not in os.environ else 3)\"")
    b, store = book(tmp_path, tree, smoke_command=check)
    b.check(GELU, "llm")
    assert store.variants()[0].ok
    assert not (tmp_path / "runs/c/variants/.smoke" / GELU.id).exists()  # cleaned up


def test_a_failing_smoke_command_rejects_the_variant_with_its_output(tmp_path, tree):
    b, store = book(tmp_path, tree, smoke_command="{python} -c \"raise SystemExit('NameError: gelu is not defined')\"")
    with pytest.raises(VariantRejected, match=r"smoke_command failed on this variant \(exit code 1\): "
                                              "NameError: gelu is not defined"):
        b.check(GELU, "llm")
    assert not store.variants()[0].ok


def test_a_hanging_smoke_command_is_killed_with_its_children(tmp_path, tree):
    marker = f"{uuid.uuid4().int % 10**6 + 7_000_000}"
    b, store = book(tmp_path, tree, smoke_command=f"sleep {marker} & sleep {marker}", smoke_timeout_s=1)
    t0 = time.monotonic()
    with pytest.raises(VariantRejected, match="did not finish in 1s"):
        b.check(GELU, "llm")
    assert time.monotonic() - t0 < 20
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(marker in " ".join(p.info["cmdline"] or [])
                                               for p in psutil.process_iter(["cmdline"])):
        time.sleep(0.1)
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    for p in left:
        p.kill()
    assert not left and not store.variants()[0].ok


def test_the_book_is_restored_from_the_store_without_rechecking(tmp_path, tree):
    b, store = book(tmp_path, tree)
    built = b.check(GELU, "llm")
    store.close()
    shutil.rmtree(tmp_path / "runs/c/variants")
    (tree / "train.py").write_text("print('rewritten by the user')\n")  # GELU would no longer build
    again, _ = book(tmp_path, tree)
    assert again.get(GELU.id) == built
    assert (tmp_path / "runs/c/variants" / f"{GELU.id}.diff").read_text() == built.diff
    snap = tmp_path / "snap"
    shutil.copytree(tree, snap)
    (note,) = again.apply(snap, GELU.id)  # the user's file changed: the variant keeps its own base
    assert "no longer apply" in note and 'ACT = "gelu"' in (snap / "train.py").read_text()


def _done(i: int, value: float, variant: str | None) -> Experiment:
    e = Experiment(f"e{i:04d}", Candidate({"lr": 0.02 + i / 1000}, "llm", "", variant), "w0", "cpu", 1,
                   ExperimentState.DONE, seq=i)
    e.result = Result(e.id, ExperimentState.DONE, {"val_bpb": value}, "cpu", 1.0, 0.0)
    return e


def test_the_base_is_the_code_of_the_best_result(tmp_path, tree):
    exps: list[Experiment] = [_done(1, 1.0, None)]
    b, _ = book(tmp_path, tree, exps)
    b.check(GELU, "llm")
    assert b.base() is None
    exps.append(_done(2, 1.01, GELU.id))  # worse: discarded
    assert b.base() is None
    exps.append(_done(3, 0.95, GELU.id))  # better than every run of the unchanged code: kept
    assert b.base() == GELU.id


def test_parameter_proposers_explore_the_base_first_then_the_other_codes(tmp_path, tree):
    exps: list[Experiment] = [_done(1, 1.0, None)]
    b, _ = book(tmp_path, tree, exps)
    silu = make_variant([Edit("train.py", 'ACT = "relu"', 'ACT = "silu"')], "SiLU")
    tanh = make_variant([Edit("train.py", 'ACT = "relu"', 'ACT = "tanh"')], "tanh")
    for v in (GELU, silu, tanh):
        b.check(v, "llm")
    assert b.explore() == [None, GELU.id, silu.id, tanh.id]  # nothing tried but the unchanged code
    exps += [_done(2, 0.9, silu.id), _done(3, 1.2, GELU.id)]
    assert b.explore() == [silu.id, None, GELU.id, tanh.id]  # the base, then by best result, untried last
    assert b.explore(k=2) == [silu.id, None]


def test_the_book_tells_each_variants_parent(tmp_path, tree):
    b, _ = book(tmp_path, tree)
    b.check(GELU, "llm")
    child = make_variant([Edit("train.py", 'ACT = "gelu"', 'ACT = "gelu"\nNORM = "layer"')], "and layer norm", GELU.id)
    b.check(child, "llm")
    assert b.parents() == {GELU.id: None, child.id: GELU.id}


def test_a_variant_within_the_noise_of_its_base_is_not_kept(tmp_path, tree):
    exps: list[Experiment] = [_done(1, 1.0, None), _done(2, 1.004, None)]  # the baseline ran twice
    exps[1].candidate = exps[0].candidate  # same params, same code: a replicate (noise sd ~0.0028)
    b, _ = book(tmp_path, tree, exps)
    b.check(GELU, "llm")
    exps.append(_done(3, 0.995, GELU.id))  # better, but by less than 2 sd of the unchanged code (0.0057)
    assert b.base() is None
    exps.append(_done(4, 0.97, GELU.id))  # now beyond the noise
    assert b.base() == GELU.id
    child = make_variant([Edit("train.py", 'ACT = "gelu"', 'ACT = "gelu"\nNORM = "layer"')], "layer", GELU.id)
    b.check(child, "llm")
    exps.append(_done(5, 0.969, child.id))  # the best result, but within noise of its parent: keep the parent
    assert b.base() == GELU.id
