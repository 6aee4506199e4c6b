"""Optimizers for model/gpt.py: Muon (+NorMuon, cautious weight decay) for the hidden matrices,
AdamW for embeddings, the head and the per-layer scalars, with the reference's learning rates.

Muon step for a stack of same-shape matrices W (N, m, n) with gradients G:
  momentum   M <- beta * M + (1 - beta) * G;   U = (1 - beta) * G + beta * M  (Nesterov) or M
  orthogonal O = polar(U) ~ U (U^T U)^(-1/2), by the Polar Express polynomial schedule
  NorMuon    O <- O / sqrt(EMA_beta2(mean_neuron(O^2))), rescaled to keep ||O||_F   (beta2 > 0)
  update     W <- W - lr * s * O - lr * s * wd * W * [O * W > 0],   s = max(1, m / n) ** 0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): one odd quintic
# p(x) = a x + b x^3 + c x^5 per iteration, each minimax-optimal for the singular values left by
# the previous ones (schedule for l = 1e-3, with the paper's safety margins; the values nanochat
# uses). In exact arithmetic, 5 steps map every singular value in [1e-3, 1] into [0.859, 1.141].
POLAR_EXPRESS_COEFFS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# Beyond the schedule: the quintic with p(1) = 1, p'(1) = p''(1) = 0, which converges onto 1.
_CONVERGENT_QUINTIC = (15 / 8, -10 / 8, 3 / 8)


def orthogonalize(G: Tensor, steps: int = 5) -> Tensor:
    """Approximate polar factor U V^T of G (..., m, n) (G = U S V^T): all singular values -> ~1.

    Runs in bf16 on CUDA (tensor cores; the result only sets a direction) and fp32 elsewhere;
    returns that dtype. Singular values below 1e-3 of ||G||_F are not guaranteed to converge."""
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT  # iterate on the smaller Gram matrix X X^T
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-7)  # spectral norm <= 1, with margin
    for i in range(steps):
        a, b, c = POLAR_EXPRESS_COEFFS[i] if i < len(POLAR_EXPRESS_COEFFS) else _CONVERGENT_QUINTIC
        A = X @ X.mT  # (..., m, m)
        X = a * X + (b * A + c * (A @ A)) @ X
    return X if wide else X.mT


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (here: Polar Express) for 2-D weight matrices.

    Parameters of equal shape are updated together as one stacked batch; param groups are split
    by shape at construction (each keeps the hyperparameters it was given). The effective step is
    lr * max(1, rows / cols) ** 0.5, so tall matrices get the RMS update of square ones.

    beta2 > 0 enables NorMuon: the orthogonalized update is divided per neuron (per row, or per
    column for wide matrices: along the longer side) by the root of an EMA of its mean square,
    then rescaled to its original Frobenius norm. beta2 = 0 is plain Muon.
    weight_decay is cautious: W is decayed (by lr * weight_decay) only where the update and W
    have the same sign, i.e. where the step already moves the weight towards zero."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        beta2: float = 0.95,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or not 0 <= beta2 < 1 or ns_steps < 1 or weight_decay < 0:
            raise ValueError(
                f"Muon: need lr >= 0, 0 <= momentum < 1, 0 <= beta2 < 1, ns_steps >= 1, "
                f"weight_decay >= 0 (got {lr}, {momentum}, {beta2}, {ns_steps}, {weight_decay})"
            )
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        defaults.update(beta2=beta2, weight_decay=weight_decay)
        items: list[Any] = list(params)
        groups: list[dict[str, Any]] = items if items and isinstance(items[0], dict) else [{"params": items}]
        by_shape: list[dict[str, Any]] = []
        for group in groups:
            tensors = list(group["params"])
            for p in tensors:
                if p.ndim != 2:
                    raise ValueError(f"Muon: parameters must be 2-D matrices, got shape {tuple(p.shape)}")
            for shape in sorted({tuple(p.shape) for p in tensors}):
                by_shape.append({**group, "params": [p for p in tensors if tuple(p.shape) == shape]})
        super().__init__(by_shape, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            if not params or all(p.grad is None for p in params):
                continue
            # The stacked (N, m, n) state lives with the group's first parameter.
            state = self.state[params[0]]
            rows, cols = params[0].shape
            if not state:
                n, device = len(params), params[0].device
                state["momentum_buffer"] = torch.zeros(n, rows, cols, dtype=torch.float32, device=device)
                neuron_shape = (n, rows, 1) if rows >= cols else (n, 1, cols)  # one entry per neuron
                state["second_moment"] = torch.zeros(neuron_shape, dtype=torch.float32, device=device)
            grads = torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in params]).float()
            weights = torch.stack(params)  # (N, m, n)
            update = _muon_direction(grads, state, group)
            lr = group["lr"] * max(1.0, rows / cols) ** 0.5
            update = update.to(weights.dtype)
            if group["weight_decay"] > 0:
                same_sign = (update * weights) > 0
                weights.sub_(weights * same_sign, alpha=lr * group["weight_decay"])
            weights.sub_(update, alpha=lr)
            torch._foreach_copy_(params, list(weights.unbind(0)))
        return loss


def _muon_direction(grads: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
    """grads (N, m, n) fp32 -> the update direction (N, m, n), before lr and weight decay."""
    beta = group["momentum"]
    buf = state["momentum_buffer"]
    buf.lerp_(grads, 1 - beta)  # M <- beta * M + (1 - beta) * G
    direction = grads.lerp_(buf, beta) if group["nesterov"] else buf
    update = orthogonalize(direction, group["ns_steps"]).float()
    if group["beta2"] > 0:
        neuron_dim = -1 if update.size(-2) >= update.size(-1) else -2  # average along the short side
        mean_sq = update.square().mean(dim=neuron_dim, keepdim=True)  # (N, m, 1) or (N, 1, n)
        state["second_moment"].lerp_(mean_sq, 1 - group["beta2"])
        normalized = update * state["second_moment"].clamp_min(1e-10).rsqrt()
        norm_before = update.norm(dim=(-2, -1), keepdim=True)  # (N, 1, 1)
        norm_after = normalized.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
        update = normalized * (norm_before / norm_after)
    return update


def build_optimizers(
    model: nn.Module,
    *,
    matrix_lr: float,
    embedding_lr: float,
    unembedding_lr: float,
    scalar_lr: float,
    weight_decay: float,
    adam_betas: tuple[float, float] = (0.8, 0.95),
    momentum: float = 0.95,
    ns_steps: int = 5,
    beta2: float = 0.95,
    model_dim: int,
) -> list[torch.optim.Optimizer]:
    """[Muon for model.param_groups()["matrix"], AdamW for the rest], as the reference sets them up.

    AdamW LRs for embedding/unembedding are scaled by (model_dim / 768) ** -0.5 (tuned at width
    768). Scalars as in the reference: resid_lambdas at scalar_lr * 0.01, x0_lambdas at scalar_lr
    with betas (0.96, 0.95), any other scalar at scalar_lr. AdamW has no weight decay; the
    (cautious) decay is Muon's. Every param group gets "initial_lr" (and a "name") for schedules."""
    groups = model.param_groups()  # type: ignore[operator]
    width_scale = (model_dim / 768) ** -0.5
    adam_groups: list[dict[str, Any]] = [
        dict(name="unembedding", params=groups["unembedding"], lr=unembedding_lr * width_scale),
        dict(name="embedding", params=groups["embedding"], lr=embedding_lr * width_scale),
    ]
    resid = getattr(model, "resid_lambdas", None)
    x0 = getattr(model, "x0_lambdas", None)
    others = [p for p in groups["scalar"] if p is not resid and p is not x0]
    if resid is not None:
        adam_groups.append(dict(name="resid_lambdas", params=[resid], lr=scalar_lr * 0.01))
    if x0 is not None:
        adam_groups.append(dict(name="x0_lambdas", params=[x0], lr=scalar_lr, betas=(0.96, 0.95)))
    if others:
        adam_groups.append(dict(name="scalar", params=others, lr=scalar_lr))
    adam_groups = [g for g in adam_groups if g["params"]]
    on_cuda = all(p.is_cuda for g in adam_groups for p in g["params"])
    adamw = torch.optim.AdamW(
        adam_groups, lr=embedding_lr, betas=adam_betas, eps=1e-10, weight_decay=0.0, fused=on_cuda or None
    )
    muon = Muon(
        [dict(name="matrix", params=groups["matrix"])],
        lr=matrix_lr,
        momentum=momentum,
        ns_steps=ns_steps,
        beta2=beta2,
        weight_decay=weight_decay,
    )
    optimizers: list[torch.optim.Optimizer] = [muon, adamw]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def set_lr_multiplier(optimizers: Sequence[torch.optim.Optimizer], multiplier: float) -> None:
    """lr = initial_lr * multiplier for every param group (warmup / warmdown schedules)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier


def set_muon_momentum(optimizers: Sequence[torch.optim.Optimizer], momentum: float) -> None:
    """Set Muon's momentum (the reference warms it from 0.85 to 0.95 over the first 300 steps)."""
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["momentum"] = momentum


def set_muon_weight_decay(optimizers: Sequence[torch.optim.Optimizer], weight_decay: float) -> None:
    """Set Muon's weight decay (the reference decays it linearly to 0 with training progress)."""
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["weight_decay"] = weight_decay
