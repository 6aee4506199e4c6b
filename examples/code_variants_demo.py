"""See Claude change the training code, without an API key or network: code variants on target=gpt.

A short campaign on the GPT target (``model/``, the gpt_tiny preset on this machine's CPU) with
``target.editable='[model/gpt.py,model/optim.py,model/train.py]'``, the one override that lets the
LLM edit the model, the optimizer and the training loop. The LLM proposer's real ``anthropic`` SDK
client talks to a pretend Claude over a mock HTTP transport (``hybrid/proposers/llm_fake.py``:
``CodeIdeas``) that proposes search/replace edits of the files its prompt shows:

- GeLU instead of ReLU² in the MLP (model/gpt.py),
- a broken edit (a syntax error in model/gpt.py): rejected before anything runs, its reason
  recorded and shown to the model,
- logit softcap 15 -> 30 (model/train.py's default),
- a cosine instead of a linear LR warm-down (model/train.py).

Each variant is checked (editable file, search text once, compiles) and then smoke-tested here
for ~1 s of training (``target.smoke_command`` of conf/target/gpt.yaml) before any worker runs
it. Sobol and TPE explore the parameters on the codes worth exploring, the GP ranks
(code, params), two local workers run the experiments in their own snapshots; your files never
change. At the end: the summary, every variant with its status, findings.md with its "Code
changes" section, and ``variants/<id>.diff`` (``git apply`` them to your tree)::

    python examples/code_variants_demo.py                      # runs/code-variants-demo/, ~1.5 min
    python examples/code_variants_demo.py --experiments 4 --seconds 2 --dir /tmp/cv
    python examples/code_variants_demo.py --mlflow             # + MLflow: runs/mlflow.db, tag "variant"

With a key the same campaign is ``hybrid target=gpt proposer=hybrid proposer.llm_share=0.5
target.editable='[model/gpt.py,model/optim.py,model/train.py]'`` (docs/gpt-target.md).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EDITABLE = ("model/gpt.py", "model/optim.py", "model/train.py")
RELU2 = "        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2: (B, T, 4C) -> (B, T, C)"
LINEAR_WARMDOWN = "        frac = max(0.0, (1.0 - progress) / warmdown)\n"
# (hypothesis, file, search, replace): what the pretend model proposes, two a reply, in this order
IDEAS = [
    ("GeLU instead of ReLU^2 in the MLP: smoother gradients early in a very short run",
     "model/gpt.py", RELU2, "        return self.c_proj(F.gelu(self.c_fc(x)))  # GeLU: (B, T, 4C) -> (B, T, C)"),
    ("A 3x MLP instead of 4x: fewer FLOPs per step, more steps in the budget",
     "model/gpt.py", "class MLP(nn.Module):", "class MLP(nn.Module)  # 3x hidden"),  # no colon: a syntax error
    ("A softer logit cap (30 instead of 15): the tiny model's logits are far from the cap anyway",
     "model/train.py", "    softcap: float = 15.0\n", "    softcap: float = 30.0\n"),
    ("A cosine instead of a linear LR warm-down: more time near the peak LR",
     "model/train.py", LINEAR_WARMDOWN,
     "        frac = 0.5 * (1.0 - math.cos(math.pi * max(0.0, (1.0 - progress) / warmdown)))  # cosine\n"),
]


def build_campaign(campaign_dir: Path, experiments: int = 8, workers: int = 2, seconds: float = 8.0,
                   tracking: bool = False, seed: int = 0) -> Any:
    """The campaign, ready to ``run()``; ``campaign.proposer.sources['llm']`` is the LLM proposer
    and ``fake.requests`` (returned second) what it sent."""
    from hydra.utils import instantiate

    from backends.local import LocalBackend
    from hybrid.assemble import compose, plain
    from hybrid.campaign import Campaign
    from hybrid.progress import Progress
    from hybrid.proposers.hybrid import HybridProposer
    from hybrid.proposers.llm_fake import CodeIdeas, FakeMessagesAPI
    from hybrid.space import SearchSpace
    from hybrid.stopping import Budget
    from hybrid.targets import TargetSpec
    from hybrid.tracking import MLflowTracker, NullTracker

    # the gpt target and its space as `hybrid target=gpt target.editable=[...]` composes them
    cfg = compose(["target=gpt", f"target.editable=[{','.join(EDITABLE)}]"])
    target_cfg = plain(cfg.target)
    target_cfg["command"] = re.sub(r"time_budget_s=\S+", f"time_budget_s={seconds:g}", target_cfg["command"])
    target = TargetSpec.from_config(target_cfg)
    space = SearchSpace.from_config(cfg.space.params)
    fake = FakeMessagesAPI([CodeIdeas(IDEAS, per_reply=2)], cache=True)
    # background=False: the pretend model answers (and its variants are smoke-tested) inside the
    # proposer's call, so every run of the demo sees its variants in the same waves; a real LLM
    # thinks on its own thread while the workers run.
    llm = {"api_key": "mock-key", "http_client": fake.http_client(), "target_name": "gpt", "max_proposals": 4,
           "refresh_after": 2, "background": False}
    proposer = HybridProposer(space, target.objective, seed, sources={"sobol": 0.5, "tpe": 0.5},
                              llm_share=0.5, llm=llm)
    ranker = instantiate(cfg.surrogate, _partial_=True)(space=space, objective=target.objective, seed=seed,
                                                        target_hardware=None, validate_top_k=0)
    campaign = Campaign(name=campaign_dir.name, dir=campaign_dir, space=space, target=target,
                        backend=LocalBackend(workers=workers, hourly_usd=0.05), proposer=proposer, ranker=ranker,
                        budget=Budget(max_experiments=experiments),
                        tracker=MLflowTracker() if tracking else NullTracker(),
                        progress=Progress("plain"), poll_interval_s=0.1)
    return campaign, fake


def report(campaign: Any) -> list[str]:
    """One line per variant: id, status, runs and best (or why it was rejected), hypothesis."""
    m = campaign.objective.metric
    runs: dict[str, list[float | None]] = {}
    with open(campaign.dir / "results.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["variant"]:
                runs.setdefault(row["variant"], []).append(float(row[m]) if row[m] else None)
    lines = []
    for info in campaign.book.known():
        v = info.variant
        if info.status != "ok":
            lines.append(f"{v.id} rejected, never ran: {info.reason}\n    {v.hypothesis}")
            continue
        mine = runs.get(v.id, [])
        done = [x for x in mine if x is not None]
        best = f", best {m} {campaign.objective.sign() * min(campaign.objective.sign() * x for x in done):.6f}" if done else ""
        lines.append(f"{v.id} ok, {len(mine)} run(s){best}: {campaign.book.diff_path(v.id)}\n    {v.hypothesis}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("runs/code-variants-demo"))
    ap.add_argument("--experiments", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0, help="training time of one experiment (time_budget_s)")
    ap.add_argument("--mlflow", action="store_true", help="mirror to MLflow (mlflow.db next to --dir: runs/mlflow.db by default)")
    args = ap.parse_args(argv)
    campaign, _ = build_campaign(args.dir.resolve(), args.experiments, args.workers, args.seconds, args.mlflow)
    summary = campaign.run()
    print(summary.text())
    print("\ncode variants:")
    for line in report(campaign):
        print(f"  {line}")
    print(f"\nfindings: {campaign.dir / 'findings.md'} (section 'Code changes')")
    print(f"diffs:    {campaign.dir / 'variants'}/*.diff  (git apply <diff> in your checkout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
