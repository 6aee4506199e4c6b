"""Code variants (hybrid/variants.py): validated against the user's tree before any worker is
spent, applied into snapshots only, and written as diffs that git apply / patch -p1 take."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hybrid.errors import ConfigError
from hybrid.types import Edit
from hybrid.variants import (
    Built,
    Editable,
    Limits,
    VariantRejected,
    build,
    diff_stat,
    make_variant,
    normalize_edits,
    variant_id,
    write_into,
)

GPT = '''import math


def act(x):
    return relu(x) ** 2


SOFTCAP = 15.0
'''

TRAIN = "lr = 0.02\nwarmup = 0.1\nprint('val_bpb: 1.0')"  # no newline at the end of the file


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "tree"
    (d / "model").mkdir(parents=True)
    (d / "model" / "gpt.py").write_text(GPT)
    (d / "train.py").write_text(TRAIN)
    (d / "README.md").write_text("not editable\n")
    return d


def editable(tree: Path) -> Editable:
    return Editable(tree, ["train.py", "model/*.py"])


def test_editable_files_come_from_globs_relative_to_the_workdir(tree):
    assert editable(tree).files == ("model/gpt.py", "train.py")
    assert not Editable(tree, [])


@pytest.mark.parametrize(("pattern", "msg"), [
    ("../x.py", "without '..'"), ("/etc/passwd", "relative to target.workdir"), ("nope/*.py", "matches no file"),
])
def test_a_bad_editable_pattern_is_a_config_error(tree, pattern, msg):
    with pytest.raises(ConfigError, match=r"target\.editable\[1\]: .*" + msg):
        Editable(tree, ["train.py", pattern])


def test_the_id_is_a_content_hash_of_parent_and_edits():
    edits = (Edit("train.py", "lr = 0.02", "lr = 0.03"),)
    assert variant_id(None, edits) == variant_id(None, list(edits)) == make_variant(edits, "h1").id
    assert make_variant(edits, "other words").id == make_variant(edits, "h1").id  # the hypothesis is not the change
    assert variant_id("v0123456789", edits) != variant_id(None, edits)
    assert variant_id(None, (Edit("train.py", "lr = 0.02", "lr = 0.04"),)) != variant_id(None, edits)
    assert make_variant(normalize_edits([{"file": "train.py", "search": "a\r\nb", "replace": "c"}])).edits[0].search == "a\nb"


def test_a_built_variant_changes_only_the_snapshot_and_its_diff_applies_to_a_clean_tree(tree, tmp_path):
    v = make_variant([Edit("model/gpt.py", "return relu(x) ** 2", "return gelu(x)"),
                      Edit("train.py", "warmup = 0.1", "warmup = 0.2")], "GeLU and a longer warmup")
    b = build(v, editable(tree))
    assert set(b.files) == {"model/gpt.py", "train.py"} and b.stat() == "2 files, +2 -2"
    assert (tree / "model/gpt.py").read_text() == GPT  # the user's files never change
    snap = tmp_path / "snap"
    shutil.copytree(tree, snap)
    assert write_into(snap, b, tree) == []
    assert "return gelu(x)" in (snap / "model/gpt.py").read_text()
    assert (snap / "train.py").read_text() == TRAIN.replace("warmup = 0.1", "warmup = 0.2")
    for tool in (["git", "apply"], ["patch", "-p1", "--quiet", "-i"]):
        clean = tmp_path / f"clean-{tool[0]}"
        shutil.copytree(tree, clean)
        (clean / "v.diff").write_text(b.diff)
        subprocess.run([*tool, "v.diff"], cwd=clean, check=True, capture_output=True)
        for f in b.files:
            assert (clean / f).read_text() == (snap / f).read_text(), (tool, f)


def test_a_stacked_variant_applies_after_its_parent_and_its_diff_holds_both(tree, tmp_path):
    ed = editable(tree)
    parent = build(make_variant([Edit("train.py", "lr = 0.02", "lr = 0.03")], "higher lr"), ed)
    child_v = make_variant([Edit("train.py", "lr = 0.03", "lr = 0.03\nbeta2 = 0.95")], "and beta2", parent.variant.id)
    child = build(child_v, ed, parent)
    assert child.variant.parent == parent.variant.id and len(child.chain) == 2
    clean = tmp_path / "clean"
    shutil.copytree(tree, clean)
    (clean / "v.diff").write_text(child.diff)
    subprocess.run(["git", "apply", "v.diff"], cwd=clean, check=True, capture_output=True)
    assert (clean / "train.py").read_text().startswith("lr = 0.03\nbeta2 = 0.95\nwarmup = 0.1")
    with pytest.raises(VariantRejected, match="builds on"):
        build(child_v, ed)  # its parent must be built first


@pytest.mark.parametrize(("edits", "reason"), [
    ([{"file": "train.py", "search": "lr = 0.5", "replace": "lr = 0.1"}], "not found in train.py"),
    ([{"file": "model/gpt.py", "search": "\n\n", "replace": "\n"}], "occurs 2 times"),
    ([{"file": "README.md", "search": "not", "replace": "now"}], "not an editable file"),
    ([{"file": "../tree/train.py", "search": "lr", "replace": "LR"}], "outside target.workdir"),
    ([{"file": "/etc/hostname", "search": "a", "replace": "b"}], "outside target.workdir"),
    ([{"file": "model/gpt.py", "search": "def act(x):", "replace": "def act(x)"}], "syntax error at line 4"),
    ([{"file": "train.py", "search": "lr", "replace": "lr"}], "changes nothing"),
    ([{"file": "train.py", "search": "", "replace": "x = 1"}], "empty search"),
    ([{"file": "train.py", "search": "lr = 0.02", "replace": "x" * 30_000}], "30009 characters"),
    ([{"file": "train.py", "search": "lr = 0.02"}], "replace missing"),
    ("not a list", "non-empty list"),
    ([], "non-empty list"),
    ([{"file": "train.py", "search": "lr = 0.02", "replace": "lr = 0.03"},
      {"file": "train.py", "search": "lr = 0.03", "replace": "lr = 0.02"}], "together change nothing"),
])
def test_a_bad_variant_is_rejected_with_a_reason(tree, edits, reason):
    with pytest.raises(VariantRejected, match=reason):
        raw = normalize_edits(edits)
        build(make_variant(raw, "h"), editable(tree))


def test_a_link_out_of_the_workdir_is_never_editable(tree, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("SECRET = 1\n")
    os.symlink(outside, tree / "model" / "link.py")
    ed = Editable(tree, ["model/*.py"])
    assert ed.files == ("model/gpt.py",)
    with pytest.raises(VariantRejected, match="not an editable file"):
        build(make_variant([Edit("model/link.py", "SECRET = 1", "SECRET = 2")]), ed)
    assert outside.read_text() == "SECRET = 1\n"


def test_size_limits(tree):
    with pytest.raises(VariantRejected, match="over the limit of 2"):
        normalize_edits([{"file": "train.py", "search": "a", "replace": "b"}] * 3, Limits(max_edits=2))
    big = make_variant([Edit("train.py", "lr = 0.02", "lr = 0.02\n" + "#" * 200)])
    with pytest.raises(VariantRejected, match="grow over the 100-byte limit"):
        build(big, editable(tree), limits=Limits(max_file_bytes=100))


def test_a_file_the_user_changed_mid_campaign_is_rebased_or_keeps_the_variants_base(tree, tmp_path):
    b = build(make_variant([Edit("train.py", "warmup = 0.1", "warmup = 0.2")]), editable(tree))
    (tree / "train.py").write_text("# tuned by hand\n" + TRAIN)  # the edit still applies
    snap = tmp_path / "s1"
    shutil.copytree(tree, snap)
    assert write_into(snap, b, tree) == ["train.py: rebased onto the user's changed file"]
    assert (snap / "train.py").read_text().startswith("# tuned by hand\nlr = 0.02\nwarmup = 0.2")
    (tree / "train.py").write_text("lr = 0.02\n")  # the edit cannot apply any more
    snap = tmp_path / "s2"
    shutil.copytree(tree, snap)
    (note,) = write_into(snap, b, tree)
    assert "no longer apply" in note and (snap / "train.py").read_text() == b.files["train.py"]


def test_diff_stat_counts_files_and_lines():
    assert diff_stat("") == "0 files, +0 -0"


def test_a_variant_and_what_it_changes_survive_the_store(tree, tmp_path):
    from hybrid.store import Store
    from hybrid.types import Candidate

    b = build(make_variant([Edit("train.py", "lr = 0.02", "lr = 0.03")], "higher lr"), editable(tree))
    rejected = make_variant([Edit("train.py", "nope", "x")], "bad")
    store = Store(tmp_path / "state.sqlite")
    assert store.add_variant(b.variant, "ok", source="llm", diff=b.diff, built=b.to_json())
    assert not store.add_variant(b.variant, "ok", source="llm", diff=b.diff, built=b.to_json())  # once
    store.add_variant(rejected, "rejected", source="llm", reason="edits[0]: search text not found in train.py")
    exp = store.create(Candidate({"x": 1}, "llm", "try it", b.variant.id), "w0", "cpu", 1, tmp_path / "experiments")
    store.close()
    again = Store.open_read_only(tmp_path / "state.sqlite")
    ok, bad = again.variants()
    assert ok.ok and ok.variant == b.variant and ok.diff == b.diff
    assert Built.from_json(ok.variant, ok.built, ok.diff) == b
    assert not bad.ok and bad.reason.startswith("edits[0]: search text not found") and bad.variant == rejected
    (e,) = again.experiments()
    assert e.id == exp.id and e.variant == b.variant.id


def test_a_store_from_before_variants_is_read_and_migrated(tmp_path):
    import sqlite3

    from hybrid.store import Store
    from hybrid.types import Candidate

    store = Store(tmp_path / "state.sqlite")
    store.claim("c", "val_bpb")
    store.create(Candidate({"x": 1}, "sobol"), "w0", "cpu", 1, tmp_path)
    store.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as c:  # make it look like a store from before variants
        c.execute("ALTER TABLE experiments DROP COLUMN variant")
        c.execute("DROP TABLE variants")
    ro = Store.open_read_only(tmp_path / "state.sqlite")
    assert ro.experiments()[0].variant is None and ro.variants() == []
    ro.close()
    again = Store(tmp_path / "state.sqlite")
    assert again._has_column("variant") and again.experiments()[0].variant is None and again.variants() == []


def test_spread_puts_parameter_candidates_on_the_codes_in_turn():
    from hybrid.types import Candidate
    from hybrid.variants import spread

    cands = [Candidate({"lr": i}, "tpe") for i in range(5)]
    assert [c.variant for c in spread(cands, ["va", None, "vb"])] == ["va", None, "vb", "va", None]
    assert [c.variant for c in spread(cands, [None])] == [None] * 5
