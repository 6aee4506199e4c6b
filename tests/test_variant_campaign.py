"""A campaign with code variants, end to end on the real local backend: an experiment is
(variant, params), run in a snapshot with the variant applied; rejected variants never run; the
user's files never change; the winner's diff applies to a clean tree; a resume keeps it all once."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.proposers.base import Proposer
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Edit, Experiment, ExperimentState, Objective
from hybrid.variants import VariantChecker, VariantRejected, make_variant

# val_bpb depends on the code (ACT) and on lr: gelu moves the lr optimum from 0.02 to 0.04.
TRAIN = textwrap.dedent(
    """
    import json, os, time
    ACT = "relu"
    lr = json.load(open("params.json"))["lr"]
    time.sleep(float(os.environ.get("HOLD", "0")))
    best = {"relu": 0.02, "gelu": 0.04, "silu": 0.03}[ACT]
    print(f"val_bpb: {1.0 + 10 * abs(lr - best) - (0.05 if ACT == 'gelu' else 0.0):.6f}")
    """
)
SPACE = SearchSpace.from_config({"lr": {"type": "float", "low": 0.001, "high": 0.1, "default": 0.02}})
OBJ = Objective("val_bpb", "minimize")
GELU = make_variant([Edit("train.py", 'ACT = "relu"', 'ACT = "gelu"')], "GeLU")
BROKEN = make_variant([Edit("train.py", 'ACT = "relu"', 'ACT = "relu"\nimport nonexistent_module_xyz (')],
                      "syntax error: rejected before it runs")
MISSING = make_variant([Edit("train.py", "ACT = 'tanh'", "ACT = 'gelu'")], "search text not in the file")


class ScriptedCoder(Proposer):
    """Proposes a fixed script of (variant or None, params) through the checker, as the LLM does."""

    name = "coder"

    def __init__(self, script: Sequence[tuple[object, dict]]) -> None:
        super().__init__(SPACE, OBJ)
        self.script = list(script)
        self.checker: VariantChecker | None = None
        self.rejected: list[str] = []

    def use_variants(self, checker: VariantChecker) -> None:
        self.checker = checker

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        out = []
        tried = {(e.variant, e.params["lr"]) for e in history}
        for variant, params in self.script:
            vid = None
            if variant is not None:
                try:
                    vid = self.checker.check(variant, "llm").variant.id
                except VariantRejected as e:
                    self.rejected.append(str(e))
                    continue
            if (vid, params["lr"]) not in tried:
                out.append(Candidate(params, "llm", getattr(variant, "hypothesis", "params"), vid))
        return out[:n]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "tree"
    d.mkdir()
    (d / "train.py").write_text(TRAIN)
    return d


def campaign(tmp_path: Path, tree: Path, proposer: Proposer, n: int, workers: int = 1, mode: str = "sync",
             hold: float = 0.0, **target) -> Campaign:
    spec = TargetSpec.from_config({"name": "t", "command": "{python} train.py", "workdir": str(tree),
                                   "metric": "val_bpb", "editable": ["train.py"], "timeout_s": 60,
                                   "env": {"HOLD": str(hold)}, **target})
    return Campaign(name="v", dir=tmp_path / "runs" / "v", space=SPACE, target=spec,
                    backend=LocalBackend(workers=workers), proposer=proposer, budget=Budget(max_experiments=n),
                    poll_interval_s=0.02, mode=mode)


def test_variants_run_in_their_snapshot_and_the_winners_diff_reproduces_its_code(tmp_path, tree):
    coder = ScriptedCoder([(BROKEN, {"lr": 0.02}), (MISSING, {"lr": 0.02}), (GELU, {"lr": 0.04}),
                           (None, {"lr": 0.05})])
    summary = campaign(tmp_path, tree, coder, 3).run()
    assert (tree / "train.py").read_text() == TRAIN  # the user's file never changed
    store = Store.open_read_only(tmp_path / "runs/v/state.sqlite")
    exps = store.experiments()
    assert [(e.source, e.variant, e.params["lr"]) for e in exps] == [
        ("baseline", None, 0.02), ("llm", GELU.id, 0.04), ("llm", None, 0.05)]  # None: the unchanged code
    assert all(e.state is ExperimentState.DONE for e in exps)
    assert summary.best_id == "e0002" and summary.best_value == pytest.approx(0.95)
    statuses = {r.variant.id: (r.status, r.reason) for r in store.variants()}
    assert statuses[GELU.id] == ("ok", "")
    assert statuses[BROKEN.id][0] == "rejected" and "syntax error" in statuses[BROKEN.id][1]
    assert statuses[MISSING.id][0] == "rejected" and "not found" in statuses[MISSING.id][1]
    assert 'ACT = "gelu"' in (Path(exps[1].workdir) / "train.py").read_text()
    assert 'ACT = "relu"' in (Path(exps[0].workdir) / "train.py").read_text()
    # the winner's diff applies to a clean checkout and reproduces the winning run's code
    clean = tmp_path / "clean"
    shutil.copytree(tree, clean)
    subprocess.run(["git", "apply", str(tmp_path / "runs/v/variants" / f"{GELU.id}.diff")], cwd=clean, check=True)
    assert (clean / "train.py").read_text() == (Path(exps[1].workdir) / "train.py").read_text()
    assert sorted(p.name for p in (tmp_path / "runs/v/variants").iterdir()) == [f"{GELU.id}.diff"]


def test_a_resume_keeps_every_variant_and_result_once(tmp_path, tree):
    script = [(GELU, {"lr": 0.04}), (BROKEN, {"lr": 0.02}), (GELU, {"lr": 0.03}), (None, {"lr": 0.06})]
    campaign(tmp_path, tree, ScriptedCoder(script), 2).run()
    campaign(tmp_path, tree, ScriptedCoder(script), 4).run()
    store = Store.open_read_only(tmp_path / "runs/v/state.sqlite")
    exps = store.experiments()
    assert [(e.variant, e.params["lr"]) for e in exps] == [(None, 0.02), (GELU.id, 0.04), (GELU.id, 0.03),
                                                          (None, 0.06)]
    assert sorted(r.variant.id for r in store.variants()) == sorted([GELU.id, BROKEN.id])


def test_a_variant_that_stops_applying_is_run_on_its_own_base_and_says_so(tmp_path, tree):
    coder = ScriptedCoder([(GELU, {"lr": 0.04})])
    campaign(tmp_path, tree, coder, 2).run()
    (tree / "train.py").write_text(TRAIN.replace('ACT = "relu"', "ACT = 'relu'  # edited by hand"))
    coder.script = [(GELU, {"lr": 0.05})]
    campaign(tmp_path, tree, coder, 3).run()
    e3 = Store.open_read_only(tmp_path / "runs/v/state.sqlite").experiments()[2]
    assert e3.variant == GELU.id and e3.state is ExperimentState.DONE
    assert (Path(e3.workdir) / "train.py").read_text() == TRAIN.replace('ACT = "relu"', 'ACT = "gelu"')
    assert e3.extra["variant_notes"] == ["train.py: the user's file changed and the edits no longer apply; "
                                         "ran on the variant's own base"]


def test_editable_files_are_part_of_the_campaigns_identity(tmp_path, tree):
    from hybrid.errors import ConfigError

    campaign(tmp_path, tree, ScriptedCoder([]), 1).run()
    (tree / "model.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match=r"target\.editable: 'train\.py' -> 'train\.py, model\.py'"):
        campaign(tmp_path, tree, ScriptedCoder([]), 2, editable=["train.py", "model.py"]).run()


SILU = make_variant([Edit("train.py", 'ACT = "relu"', 'ACT = "silu"')], "SiLU")
KILL_SCRIPT = [(GELU, {"lr": 0.04}), (SILU, {"lr": 0.03}), (BROKEN, {"lr": 0.02}), (GELU, {"lr": 0.05}),
               (SILU, {"lr": 0.02}), (None, {"lr": 0.01})]


def test_kill_9_during_a_wave_of_variants_then_resume_keeps_every_variant_and_result_once(tmp_path, tree):
    import os
    import signal
    import sys
    import time

    from hybrid.errors import StoreError

    # the orchestrator in its own process, a wave of 3 variant experiments running when it is killed
    root = Path(__file__).resolve().parent.parent
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); from pathlib import Path\n"
            "from tests.test_variant_campaign import ScriptedCoder, KILL_SCRIPT, campaign\n"
            f"campaign(Path({str(tmp_path)!r}), Path({str(tree)!r}), ScriptedCoder(KILL_SCRIPT), 6, workers=3,"
            " mode='async', hold=3.0).run()\n")
    orch = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    db = tmp_path / "runs/v/state.sqlite"
    deadline = time.monotonic() + 90
    running: list[Experiment] = []
    while time.monotonic() < deadline and len(running) < 2:
        time.sleep(0.05)
        try:
            running = [e for e in Store.open_read_only(db).experiments() if e.state is ExperimentState.RUNNING
                       and e.variant is not None] if db.exists() else []
        except StoreError:
            running = []
    os.kill(orch.pid, signal.SIGKILL)
    orch.wait(timeout=30)
    assert len(running) >= 2, orch.stderr.read().decode()[-2000:] if orch.stderr else ""

    summary = campaign(tmp_path, tree, ScriptedCoder(KILL_SCRIPT), 6, workers=3, mode="async", hold=0.0).run()
    store = Store.open_read_only(db)
    exps = store.experiments()
    ids = [e.id for e in exps]
    assert len(ids) == len(set(ids)) and summary.n_experiments == len(exps) == 6
    keys = [(e.variant, e.params["lr"]) for e in exps]
    assert len(keys) == len(set(keys))  # every (code, params) once
    assert all(e.state is ExperimentState.DONE for e in exps)  # the killed wave re-attached and finished
    recorded = [r.variant.id for r in store.variants()]
    assert sorted(recorded) == sorted({GELU.id, SILU.id, BROKEN.id})  # each variant once
    for e in exps:
        if e.variant is not None:
            assert (tmp_path / "runs/v/variants" / f"{e.variant}.diff").is_file()


def test_a_variant_printing_its_environment_finds_no_key(tmp_path, tree, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-orchestrator-only")
    snoop = make_variant([Edit("train.py", "import json, os, time",
                               "import json, os, time\nprint(sorted(k for k in os.environ if 'ANTHROPIC' in k))")],
                         "print the environment (what a hostile variant would do)")
    campaign(tmp_path, tree, ScriptedCoder([(snoop, {"lr": 0.04})]), 2).run()
    (e,) = [e for e in Store.open_read_only(tmp_path / "runs/v/state.sqlite").experiments() if e.variant]
    log = (Path(e.workdir) / "run.log").read_text()
    assert "[]" in log and "sk-ant" not in log and e.state is ExperimentState.DONE
