"""GPU check of the training target: throughput/MFU at the reference config, compile correctness.

Runs the gpt_h100 preset (depth 8, aspect 64, seq 2048, 2^19 tokens/step) for a short budget
with torch.compile + bf16, prints tok/s, MFU, steps/s and peak VRAM against the reference
autoresearch figures (H100, FA3: 1.66 M tok/s, MFU 39.8 %, 315 ms/step, 45 GB), then evaluates
the same trained weights eagerly and compares val_bpb with the compiled evaluation.

    python benchmarks/gpu_check.py --budget 60 [key=value ...]   (model.train keys)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REFERENCE = {"tok_per_s": 1.66e6, "mfu_percent": 39.8, "ms_per_step": 315.0, "peak_vram_gb": 45.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch

    from model.data import evaluate_bpb
    from model.train import format_results, load_config, train

    cfg = load_config(["preset=gpt_h100", f"time_budget_s={args.budget}", *args.overrides])
    keep: dict = {}
    metrics = train(cfg, log=lambda s: print(s, flush=True), keep=keep)
    print(format_results(metrics), flush=True)
    ms_per_step = cfg.total_batch_size / metrics["tokens_per_s"] * 1000
    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, **metrics,
        "ms_per_step": ms_per_step, "steps_per_s": 1000 / ms_per_step,
        "vs_reference": {"tok_per_s": metrics["tokens_per_s"] / REFERENCE["tok_per_s"],
                         "mfu": metrics["mfu_percent"] / REFERENCE["mfu_percent"]},
    }
    # Same weights, evaluated eagerly (no compile) in bf16 and in fp32: compile must not change the answer.
    model, device = keep["model"], keep["device"]
    eval_bs = cfg.eval_batch_size or cfg.device_batch_size
    for name, dtype in (("eager_bf16", torch.bfloat16), ("eager_fp32", None)):
        t0 = time.time()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None and device.type == "cuda"):
            report[f"val_bpb_{name}"] = evaluate_bpb(model, keep["tokenizer"], keep["data_dir"], eval_bs, cfg.seq_len,
                                                     device, cfg.eval_tokens)
        report[f"eval_s_{name}"] = time.time() - t0
    report["compile_vs_eager_bf16"] = abs(report["val_bpb"] - report["val_bpb_eager_bf16"])
    print(json.dumps(report, indent=2), flush=True)
    Path(args.out, "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
