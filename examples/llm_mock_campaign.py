"""See the LLM proposer at work without an API key or network.

A short campaign over the example objective (objective.py) with ``proposer=hybrid``: the classical
sources plus the LLM proposer, whose real ``anthropic`` SDK client talks to a pretend Claude over a
mock HTTP transport (hybrid/proposers/llm_fake.py). The pretend model moves one or two parameters
of the incumbent per proposal and words a hypothesis for each, so you can watch LLM candidates
enter the waves, their hypotheses land in results.tsv, hypotheses.md and MLflow, and the token
cost join the campaign's spend::

    python examples/llm_mock_campaign.py                     # runs/llm-mock/
    python examples/llm_mock_campaign.py --experiments 20 --workers 4
    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db   # child runs carry tag "rationale"

With a real key the same campaign is ``hybrid proposer=hybrid`` (see the README).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_campaign(campaign_dir: Path, experiments: int = 12, workers: int = 2, seconds: float = 0.3,
                   tracking: bool = True, seed: int = 0) -> Any:
    """The campaign, ready to ``run()``; ``campaign.proposer`` holds the hybrid with its LLM source."""
    from omegaconf import OmegaConf

    from backends.local import LocalBackend
    from hybrid.campaign import Campaign
    from hybrid.progress import Progress
    from hybrid.proposers.hybrid import HybridProposer
    from hybrid.proposers.llm_fake import FakeMessagesAPI, OneFactorClaude
    from hybrid.space import SearchSpace
    from hybrid.stopping import Budget
    from hybrid.targets import TargetSpec
    from hybrid.tracking import MLflowTracker, NullTracker

    space = SearchSpace.from_config(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/space/example.yaml"))["params"])
    target = TargetSpec.from_config({"name": "example", "command": "{python} objective.py",
                                     "workdir": str(ROOT / "examples"), "metric": "val_bpb", "timeout_s": 60,
                                     "env": {"EXAMPLE_SECONDS": str(seconds)}})
    fake = FakeMessagesAPI([OneFactorClaude(seed=seed, per_reply=4)])
    llm = {"api_key": "mock-key", "http_client": fake.http_client(), "target_name": "example",
           "max_proposals": 4, "refresh_after": 2}
    proposer = HybridProposer(space, target.objective, seed, sources={"sobol": 0.5, "tpe": 0.5},
                              llm_share=0.5, llm=llm)
    return Campaign(name=campaign_dir.name, dir=campaign_dir, space=space, target=target,
                    backend=LocalBackend(workers=workers, hourly_usd=2.0), proposer=proposer,
                    budget=Budget(max_experiments=experiments),
                    tracker=MLflowTracker() if tracking else NullTracker(),
                    progress=Progress("plain"), poll_interval_s=0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("runs/llm-mock"))
    ap.add_argument("--experiments", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.5, help="simulated training time of one experiment")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    campaign = build_campaign(args.dir.resolve(), args.experiments, args.workers, args.seconds, not args.no_mlflow)
    summary = campaign.run()
    print(summary.text())
    with open(campaign.dir / "results.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["source"] == "llm":
                value = row[campaign.objective.metric]  # the column is named after the metric
                print(f"{row['experiment_id']} {value or row['status']:>10}  {row['description']}")
    print(f"results: {campaign.dir / 'results.tsv'}, hypotheses: {campaign.dir / 'hypotheses.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
