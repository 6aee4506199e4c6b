"""A finished campaign with code variants, built the way the campaign builds one: a real target tree,
variants made and checked by hybrid.variants, recorded in a real Store with their experiments and
results, and each ok variant's diff in ``variants/<id>.diff``. Shared by the report and MLflow tests.

The story it tells (val_bpb, minimize, every run on cpu):

- unchanged code: baseline 1.0, a sobol run 0.99 and its replicate 0.992 (noise sd 0.00141);
- GELU (first level): 0.975 and 0.97 -> effect -0.02 vs the unchanged code, held;
- SOFTCAP (stacked on GELU): 0.96 -> effect -0.01 vs GELU's code, held, the winner;
- BROKEN: its one run crashes; NEUTRAL: 0.989 vs 0.99, within noise;
- MISSING: rejected (its search text is not in the file), never runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hybrid.store import Store
from hybrid.types import Candidate, Edit, ExperimentState, FailureKind, Result, Variant
from hybrid.variants import Built, Editable, VariantRejected, build, make_variant

GPT = '''import math


def act(x):
    return relu(x) ** 2


SOFTCAP = 15.0
WARMUP = 0.1
'''

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "default": 0.01}}


@dataclass
class VariantCampaign:
    dir: Path
    tree: Path
    gelu: Built
    softcap: Built
    broken: Built
    neutral: Built
    missing: Variant
    reason: str  # why MISSING was rejected


def make_tree(root: Path) -> Path:
    tree = root / "target"
    (tree / "model").mkdir(parents=True)
    (tree / "model" / "gpt.py").write_text(GPT)
    return tree


def write_variant_campaign(root: Path, name: str = "codes", tracking: dict | None = None,
                           long_variant: bool = False) -> VariantCampaign:
    tree = make_tree(root)
    ed = Editable(tree, ["model/*.py"])
    gelu = build(make_variant([Edit("model/gpt.py", "relu(x) ** 2", "gelu(x)")], "GELU instead of relu squared"), ed)
    softcap = build(make_variant([Edit("model/gpt.py", "SOFTCAP = 15.0", "SOFTCAP = 30.0")],
                                 "a softer logit cap on top of GELU", parent=gelu.variant.id), ed, gelu)
    body = "".join(f"# line {i}\n" for i in range(250)) if long_variant else "WARMUP = 0.2\n"
    broken = build(make_variant([Edit("model/gpt.py", "WARMUP = 0.1\n", body)], "longer warmup"), ed)
    neutral = build(make_variant([Edit("model/gpt.py", "import math\n", "import math  # unchanged\n")],
                                 "a comment only"), ed)
    missing = make_variant([Edit("model/gpt.py", "def nope():", "def yes():")], "edit a function that is not there")
    try:
        build(missing, ed)
    except VariantRejected as e:
        reason = str(e)
    else:
        raise AssertionError("MISSING was not rejected")

    d = root / name
    d.mkdir()
    store = Store(d / "state.sqlite")
    store.claim(name, "val_bpb")
    store.set_meta("config", {"space": {"params": SPACE}, "target": {"metric": "val_bpb", "direction": "minimize"},
                              "campaign": {"name": name, "target_hardware": None},
                              "tracking": tracking or {"name": "none"}})
    store.set_meta("created", 1000.0)
    for b in (gelu, softcap, broken):
        store.add_variant(b.variant, "ok", source="llm", diff=b.diff, built=b.to_json())
    store.add_variant(missing, "rejected", source="llm", reason=reason)
    store.add_variant(neutral.variant, "ok", source="llm", diff=neutral.diff, built=neutral.to_json())
    runs: list[tuple[dict, str, Built | None, float | None]] = [
        ({"lr": 0.01}, "baseline", None, 1.0),
        ({"lr": 0.02}, "sobol", None, 0.99),
        ({"lr": 0.01}, "llm", gelu, 0.975),
        ({"lr": 0.02}, "llm", gelu, 0.97),
        ({"lr": 0.02}, "llm", softcap, 0.96),
        ({"lr": 0.02}, "llm", broken, None),
        ({"lr": 0.02}, "replicate", None, 0.992),
        ({"lr": 0.02}, "llm", neutral, 0.989),
    ]
    t = 1000.0
    for params, source, built, value in runs:
        vid = built.variant.id if built else None
        hyp = built.variant.hypothesis if built else ""
        e = store.create(Candidate(params, source, hyp, vid), "w0", "cpu", 1, d / "experiments")
        store.mark_running(e.id, f"job{e.seq}", t)
        if value is None:
            result = Result(e.id, ExperimentState.CRASHED, {}, "cpu", 5.0, 0.001, "NameError: gelu",
                            "exit code 1", FailureKind.CRASH)
        else:
            result = Result(e.id, ExperimentState.DONE, {"val_bpb": value}, "cpu", 60.0, 0.01)
        t += 60.0
        store.record(result, ended=t)
    store.set_meta("stop_reason", "budget.max_experiments reached")
    store.set_meta("status", "finished")
    store.set_meta("active_s", t - 1000.0)
    store.close()
    for b in (gelu, softcap, broken, neutral):  # as the campaign writes them (hybrid.variant_book)
        path = d / "variants" / f"{b.variant.id}.diff"
        path.parent.mkdir(exist_ok=True)
        path.write_text(b.diff)
    return VariantCampaign(d, tree, gelu, softcap, broken, neutral, missing, reason)
