"""A synthetic training objective for trying the campaign anywhere in seconds.

It behaves like a small training run tuned by a campaign: it takes the same kind of
parameters, "trains" for EXAMPLE_SECONDS, prints autoresearch-style metric lines and fails
the way real runs do (out of memory when the model is too deep for its attention pattern).
The response surface is known, so you can check what a campaign finds:
  - best lr near 0.02 (log scale), best warmup_ratio near 0.05
  - weight_decay helps a little, more so for deep models (an interaction)
  - depth: deeper is better up to 12; depth 16 with full attention (L) runs out of memory

Usage: python objective.py lr=0.01 depth=8 ...   (any subset; the rest take defaults)
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
import zlib

DEFAULTS = {"lr": 0.01, "warmup_ratio": 0.1, "weight_decay": 0.0, "depth": 8, "window_pattern": "SSSL"}


def parse_args(argv: list[str]) -> dict:
    params = dict(DEFAULTS)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in DEFAULTS:
            sys.exit(f"unknown parameter {key!r}; known: {', '.join(DEFAULTS)}")
        params[key] = type(DEFAULTS[key])(value) if not isinstance(DEFAULTS[key], float) else float(value)
    return params


def val_bpb(p: dict) -> float:
    lr_term = 0.08 * (math.log10(p["lr"]) - math.log10(0.02)) ** 2
    warmup_term = 0.3 * (p["warmup_ratio"] - 0.05) ** 2
    depth_term = 0.004 * abs(p["depth"] - 12) + (0.01 if p["depth"] > 12 else 0.0)
    wd_term = -0.02 * p["weight_decay"] * (p["depth"] / 8)  # interaction: weight decay helps deep models more
    window_term = {"L": 0.0, "SL": 0.002, "SSL": 0.004, "SSSL": 0.006}[p["window_pattern"]]
    return 0.98 + lr_term + warmup_term + depth_term + wd_term + window_term


def main() -> None:
    p = parse_args(sys.argv[1:])
    seconds = float(os.environ.get("EXAMPLE_SECONDS", "1.0"))
    # the noise is the configuration's: floats at 10 significant digits, so a last-digit difference in a
    # proposed value (another numpy/optuna build) does not draw other noise
    same = sorted((k, f"{v:.10g}" if isinstance(v, float) else v) for k, v in p.items())
    seed = zlib.crc32(repr((os.environ.get("HYBRID_EXPERIMENT_ID", ""), same)).encode())
    rng = random.Random(seed)
    full_layers = p["depth"] // len(p["window_pattern"]) * p["window_pattern"].count("L")
    vram_mb = 2000.0 * p["depth"] * (1.0 + full_layers / max(p["depth"], 1))
    print(f"config: {p}", flush=True)
    steps = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        steps += 1
        if p["depth"] >= 16 and p["window_pattern"] == "L" and steps > 2:
            print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
            sys.exit(1)
    print("---")
    print(f"val_bpb: {val_bpb(p) + rng.gauss(0, 0.0005):.6f}")
    print(f"training_seconds: {seconds:.1f}")
    print(f"peak_vram_mb: {vram_mb:.1f}")
    print(f"num_steps: {steps}")


if __name__ == "__main__":
    main()
