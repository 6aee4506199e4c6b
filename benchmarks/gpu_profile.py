"""Where a training step of the reference config spends its GPU time (torch.profiler).

    python benchmarks/gpu_profile.py [key=value ...]     (model.train keys; gpt_h100 preset)

Prints per-phase wall time (forward+backward, optimizer) and the top CUDA kernels of 3 profiled
steps after compilation and warm-up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from model.data import load_tokenizer, make_loader
    from model.gpt import GPT
    from model.optim import build_optimizers
    from model.prepare import data_dir
    from model.train import load_config, model_config

    cfg = load_config(["preset=gpt_h100", *sys.argv[1:]])
    device = torch.device("cuda")
    torch.set_float32_matmul_precision("high")
    ddir = data_dir(cfg.data)
    tok = load_tokenizer(ddir)
    with torch.device("meta"):
        model = GPT(model_config(cfg, tok.vocab_size))
    model.to_empty(device=device)
    model.init_weights()
    opts = build_optimizers(model, matrix_lr=0.04, embedding_lr=0.6, unembedding_lr=0.004, scalar_lr=0.5,
                            weight_decay=0.2, model_dim=model.config.n_embd)
    cmodel = torch.compile(model, dynamic=False)
    loader = make_loader(tok, ddir, "train", cfg.device_batch_size, cfg.seq_len, device)
    accum = cfg.total_batch_size // (cfg.device_batch_size * cfg.seq_len)

    def step() -> tuple[float, float]:
        torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(accum):
            x, y = next(loader)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = cmodel(x, y)
            (loss / accum).backward()
        torch.cuda.synchronize()
        t1 = time.time()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return t1 - t0, time.time() - t1

    for _ in range(8):
        step()
    times = [step() for _ in range(5)]
    fb = sum(t[0] for t in times) / len(times)
    op = sum(t[1] for t in times) / len(times)
    print(f"per step: forward+backward {fb * 1000:.1f} ms, optimizers {op * 1000:.1f} ms, total {(fb + op) * 1000:.1f} ms")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
