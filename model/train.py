"""Train the GPT for a fixed wall-clock budget and report validation bits per byte.

    python -m model.train depth=4 optim.matrix_lr=0.05 ...
    python -m model.train check=true depth=4 ...   # only validate the settings (no data, no training)

Missing data is prepared on first use (``python -m model.prepare`` with the same ``data.*``, under
its file lock, so concurrent runs prepare it once); ``prepare=false`` makes it an error instead.

Keys are OmegaConf dotlist overrides of :class:`TrainConfig` (``optim.*``, ``data.*`` nested).
``preset=auto`` picks ``conf/model/gpt_h100.yaml`` on a CUDA machine and ``gpt_tiny.yaml`` on a
CPU; explicit keys override the preset. The run ends with the block a campaign parses::

    ---
    val_bpb:          0.997900
    training_seconds: 300.1
    ...

Time budget as in the reference: the first ``warmup_steps_uncounted`` steps (compilation,
allocator warm-up) are not counted; training stops once counted time reaches
``time_budget_s``; LR and momentum schedules follow the fraction of the budget spent.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "conf" / "model"
PEAK_FLOPS = {"h100": 989.5e12, "h200": 989.5e12, "a100": 312e12}  # dense bf16 per GPU


@dataclass
class OptimConfig:
    embedding_lr: float = 0.6  # token/value embeddings (AdamW)
    unembedding_lr: float = 0.004  # lm_head (AdamW)
    matrix_lr: float = 0.04  # hidden matrices (Muon)
    scalar_lr: float = 0.5  # per-layer scalars and gates (AdamW)
    weight_decay: float = 0.2  # cautious weight decay of the Muon matrices
    adam_betas: list[float] = field(default_factory=lambda: [0.8, 0.95])
    warmup_ratio: float = 0.0  # fraction of the time budget with a linear LR warm-up
    warmdown_ratio: float = 0.5  # fraction of the time budget with a linear LR decay at the end
    final_lr_frac: float = 0.0  # LR multiplier at the end of the warm-down
    momentum: float = 0.95  # Muon momentum (after its warm-up)
    momentum_start: float = 0.85  # Muon momentum at step 0, raised linearly to `momentum`
    momentum_warmup_steps: int = 300
    ns_steps: int = 5  # orthogonalization iterations
    beta2: float = 0.95  # NorMuon second-moment decay (0 disables)


@dataclass
class TrainConfig:
    preset: str = "auto"  # auto | gpt_tiny | gpt_h100 (a file in conf/model/)
    # model shape: n_embd = depth * aspect_ratio rounded up to a multiple of head_dim
    depth: int = 8
    aspect_ratio: int = 64
    head_dim: int = 128
    n_kv_head: int = 0  # 0: as many as query heads
    window_pattern: str = "SSSL"
    softcap: float = 15.0
    # batch: tokens per optimizer step; device_batch_size sequences per micro-step
    seq_len: int = 2048
    total_batch_size: int = 2**19
    device_batch_size: int = 128
    time_budget_s: float = 300.0
    warmup_steps_uncounted: int = 10
    eval_tokens: int = 40 * 2**19
    eval_batch_size: int = 0  # 0: device_batch_size
    seed: int = 42
    device: str = "auto"  # auto | cuda | cpu
    compile: str = "auto"  # auto (on CUDA) | true | false
    threads: int = 0  # CPU threads for torch (0: torch's default)
    log_every: int = 10
    # "progress: <fraction of the budget> train_loss: <smoothed loss>" lines at this many evenly spaced
    # points of the time budget (the campaign's progress contract; 0: none)
    progress_points: int = 16
    # missing data: prepare it first, once (model.prepare under its file lock); false: an error
    prepare: bool = True
    # validate the settings and exit 0 without loading data or training (a campaign's check_command)
    check: bool = False
    data: dict[str, Any] = field(default_factory=dict)  # model.prepare's keys (source, vocab_size, ...)
    optim: OptimConfig = field(default_factory=OptimConfig)


class TrainingFailed(RuntimeError):
    """The loss became NaN/inf or diverged: the run is hopeless."""


def load_config(overrides: list[str]) -> TrainConfig:
    """Defaults <- preset YAML <- ``key=value`` overrides; unknown keys raise ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"{o}: expected key=value (e.g. depth=4 optim.matrix_lr=0.05)")
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as e:
        raise ConfigError(f"could not parse the arguments: {e}") from None
    schema = OmegaConf.structured(TrainConfig)
    preset = str(cli.get("preset", "auto"))
    if preset == "auto":
        preset = "gpt_h100" if _cuda_available() and str(cli.get("device", "auto")) != "cpu" else "gpt_tiny"
    path = PRESETS / f"{preset}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"preset: {preset!r} is not one of auto, {known}")
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(path), cli, {"preset": preset})
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        if "not in" in str(e):
            known = ", ".join(k for k in TrainConfig.__dataclass_fields__ if k != "optim")
            optim = ", ".join(f"optim.{k}" for k in OptimConfig.__dataclass_fields__)
            raise ConfigError(f"{key}: unknown key; known: {known}, {optim}, data.*") from None
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    cfg: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    """Every check that needs neither torch nor data, so that ``check=true`` is instant and complete."""
    from model.prepare import DataConfig

    positive = ("depth", "aspect_ratio", "head_dim", "seq_len", "total_batch_size", "device_batch_size")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(cfg, name)}")
    if cfg.time_budget_s <= 0:
        raise ConfigError(f"time_budget_s: must be positive, got {cfg.time_budget_s}")
    if cfg.progress_points < 0:
        raise ConfigError(f"progress_points: must be >= 0 (0: no progress lines), got {cfg.progress_points}")
    if not cfg.window_pattern or set(cfg.window_pattern.upper()) - {"S", "L"}:
        raise ConfigError(f"window_pattern: {cfg.window_pattern!r} must be made of S and L, e.g. SSSL")
    tokens_per_micro = cfg.device_batch_size * cfg.seq_len
    if cfg.total_batch_size % tokens_per_micro:
        raise ConfigError(f"total_batch_size: {cfg.total_batch_size} is not a multiple of device_batch_size x seq_len "
                          f"({cfg.device_batch_size} x {cfg.seq_len} = {tokens_per_micro})")
    for name in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
        v = getattr(cfg.optim, name)
        if not 0 <= v <= 1:
            raise ConfigError(f"optim.{name}: {v} must be within [0, 1]")
    if cfg.optim.warmup_ratio + cfg.optim.warmdown_ratio > 1:
        raise ConfigError("optim.warmup_ratio + optim.warmdown_ratio must be <= 1")
    if len(cfg.optim.adam_betas) != 2:
        raise ConfigError(f"optim.adam_betas: expected two numbers, got {cfg.optim.adam_betas}")
    if cfg.compile not in ("auto", "true", "false", True, False):
        raise ConfigError(f"compile: {cfg.compile!r} is not auto, true or false")
    _heads(cfg)
    DataConfig.from_mapping(cfg.data)  # unknown data.* keys and bad values


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def lr_multiplier(progress: float, warmup: float, warmdown: float, final_frac: float) -> float:
    """Warm-up, constant, linear warm-down to ``final_frac``; ``progress`` is budget spent in [0, 1]."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if warmdown > 0 and progress > 1.0 - warmdown:
        frac = max(0.0, (1.0 - progress) / warmdown)
        return frac + (1.0 - frac) * final_frac
    return 1.0


def _heads(cfg: TrainConfig) -> tuple[int, int, int]:
    """(n_embd, n_head, n_kv_head): n_embd = depth * aspect_ratio rounded up to a multiple of head_dim."""
    n_embd = math.ceil(cfg.depth * cfg.aspect_ratio / cfg.head_dim) * cfg.head_dim
    n_head = n_embd // cfg.head_dim
    n_kv = cfg.n_kv_head or n_head
    if n_head % n_kv:
        raise ConfigError(f"n_kv_head: {n_kv} must divide the number of heads ({n_head})")
    return n_embd, n_head, n_kv


def model_config(cfg: TrainConfig, vocab_size: int):
    from model.gpt import GPTConfig

    n_embd, n_head, n_kv = _heads(cfg)
    return GPTConfig(sequence_len=cfg.seq_len, vocab_size=vocab_size, n_layer=cfg.depth, n_head=n_head,
                     n_kv_head=n_kv, n_embd=n_embd, window_pattern=cfg.window_pattern.upper(), softcap=cfg.softcap)


def _hardware_peak(device) -> float:
    """Dense bf16 peak FLOP/s of this GPU, 0 when unknown (CPU): MFU is then reported as 0."""
    import torch

    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device).lower()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)


def train(cfg: TrainConfig, log=print, keep: dict[str, Any] | None = None) -> dict[str, float]:
    """Run one training job; returns the metrics of the final block (plus ``tokens_per_s``).
    Raises TrainingFailed. ``keep``, when given, receives the trained model (and its compiled
    form) for callers that check it further."""
    import torch

    from model.data import evaluate_bpb, is_prepared, load_tokenizer, make_loader
    from model.gpt import GPT
    from model.optim import build_optimizers, set_lr_multiplier, set_muon_momentum
    from model.prepare import data_dir as find_data_dir
    from model.prepare import prepare

    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.manual_seed(cfg.seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_cuda)
    do_compile = use_cuda if cfg.compile == "auto" else cfg.compile in ("true", True)

    ddir = find_data_dir(cfg.data)
    if cfg.prepare and not is_prepared(ddir):
        # The first run on a machine prepares the data, so a campaign's first command just works;
        # prepare() holds the data dir's file lock: a concurrent run waits, then finds it ready.
        log(f"data: nothing prepared at {ddir} yet; preparing it first (prepare=false: fail instead)")
        prepare(cfg.data, log=log)
    tokenizer = load_tokenizer(ddir)
    gpt_cfg = model_config(cfg, tokenizer.vocab_size)
    with torch.device("meta"):
        model = GPT(gpt_cfg)
    model.to_empty(device=device)
    model.init_weights()
    num_params = model.num_params()
    flops_per_token = model.estimate_flops()
    optimizers = build_optimizers(
        model, matrix_lr=cfg.optim.matrix_lr, embedding_lr=cfg.optim.embedding_lr,
        unembedding_lr=cfg.optim.unembedding_lr, scalar_lr=cfg.optim.scalar_lr,
        weight_decay=cfg.optim.weight_decay, adam_betas=tuple(cfg.optim.adam_betas), momentum=cfg.optim.momentum,
        ns_steps=cfg.optim.ns_steps, beta2=cfg.optim.beta2, model_dim=gpt_cfg.n_embd,
    )
    step_model = torch.compile(model, dynamic=False) if do_compile else model
    grad_accum = cfg.total_batch_size // (cfg.device_batch_size * cfg.seq_len)
    loader = make_loader(tokenizer, ddir, "train", cfg.device_batch_size, cfg.seq_len, device, seed=cfg.seed)
    log(f"model: {num_params / 1e6:.2f}M params, depth {cfg.depth}, n_embd {gpt_cfg.n_embd}, heads {gpt_cfg.n_head}, "
        f"window {gpt_cfg.window_pattern}, vocab {tokenizer.vocab_size}; device {device}, compile {do_compile}; "
        f"batch {cfg.total_batch_size} tokens ({grad_accum} x {cfg.device_batch_size} x {cfg.seq_len})")

    peak = _hardware_peak(device)
    diverged_at = 2.5 * math.log(tokenizer.vocab_size)  # far worse than a uniform guess: diverged
    x, y = next(loader)
    step, training_s, tokens_counted, smooth = 0, 0.0, 0, 0.0
    next_point = 1  # the next progress point to report, of cfg.progress_points
    while True:
        if use_cuda:
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(grad_accum):
            with autocast:
                loss = step_model(x, y)
            (loss / grad_accum).backward()
            x, y = next(loader)
        progress = min(training_s / cfg.time_budget_s, 1.0)
        set_lr_multiplier(optimizers, lr_multiplier(progress, cfg.optim.warmup_ratio, cfg.optim.warmdown_ratio,
                                                    cfg.optim.final_lr_frac))
        frac = min(step / max(cfg.optim.momentum_warmup_steps, 1), 1.0)
        set_muon_momentum(optimizers, (1 - frac) * cfg.optim.momentum_start + frac * cfg.optim.momentum)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_f = float(loss.detach())  # synchronizes
        dt = time.time() - t0
        if not math.isfinite(loss_f) or loss_f > diverged_at:
            raise TrainingFailed(f"loss {loss_f} at step {step}")
        smooth = loss_f if step == 0 else 0.9 * smooth + 0.1 * loss_f
        if step >= cfg.warmup_steps_uncounted:
            training_s += dt
            tokens_counted += cfg.total_batch_size
        step += 1
        points = cfg.progress_points
        if points and next_point <= points and training_s >= next_point / points * cfg.time_budget_s:
            log(f"progress: {min(training_s / cfg.time_budget_s, 1.0):.4f} train_loss: {smooth:.4f}")
            while next_point <= points and training_s >= next_point / points * cfg.time_budget_s:
                next_point += 1  # one line per crossing, even when a slow step jumps several points
        if step % cfg.log_every == 0 or step == 1:
            tok_s = cfg.total_batch_size / dt
            mfu = flops_per_token * tok_s / peak * 100 if peak else 0.0
            left = max(0.0, cfg.time_budget_s - training_s)
            log(f"step {step:05d} | loss {smooth:.4f} | {dt * 1000:.0f} ms | {tok_s:,.0f} tok/s | mfu {mfu:.1f}% "
                f"| {training_s:.1f}s counted, {left:.1f}s left")
        if step > cfg.warmup_steps_uncounted and training_s >= cfg.time_budget_s:
            break

    model.eval()
    eval_bs = cfg.eval_batch_size or cfg.device_batch_size
    with autocast:
        val_bpb = evaluate_bpb(step_model, tokenizer, ddir, eval_bs, cfg.seq_len, device, cfg.eval_tokens)
    if use_cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # peak resident memory of this process (ru_maxrss is in KiB on Linux)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mfu = flops_per_token * tokens_counted / training_s / peak * 100 if peak and training_s else 0.0
    if keep is not None:
        keep.update(model=model, step_model=step_model, tokenizer=tokenizer, data_dir=ddir, device=device)
    return {
        "val_bpb": val_bpb,
        "training_seconds": training_s,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_mb,
        "mfu_percent": mfu,
        "total_tokens_M": step * cfg.total_batch_size / 1e6,
        "num_steps": float(step),
        "num_params_M": num_params / 1e6,
        "depth": float(cfg.depth),
        "tokens_per_s": tokens_counted / training_s if training_s else 0.0,
    }


def format_results(m: dict[str, float]) -> str:
    """The final block, names and order fixed (the campaign parses it)."""
    return "\n".join([
        "---",
        f"val_bpb:          {m['val_bpb']:.6f}",
        f"training_seconds: {m['training_seconds']:.1f}",
        f"total_seconds:    {m['total_seconds']:.1f}",
        f"peak_vram_mb:     {m['peak_vram_mb']:.1f}",
        f"mfu_percent:      {m['mfu_percent']:.2f}",
        f"total_tokens_M:   {m['total_tokens_M']:.1f}",
        f"num_steps:        {int(m['num_steps'])}",
        f"num_params_M:     {m['num_params_M']:.1f}",
        f"depth:            {int(m['depth'])}",
    ])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(argv)
        if cfg.check:
            print("check: the settings are valid (nothing loaded or trained: check=true)", flush=True)
            return
        print(f"config: {asdict(cfg)}", flush=True)
        metrics = train(cfg, log=lambda s: print(s, flush=True))
    except ModelError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingFailed as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
    print(format_results(metrics), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    main()
