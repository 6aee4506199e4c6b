"""model/optim.py on CPU: orthogonalization, Muon updates, NorMuon, cautious decay, AdamW setup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.optim import (
    POLAR_EXPRESS_COEFFS,
    Muon,
    build_optimizers,
    orthogonalize,
    set_lr_multiplier,
    set_muon_momentum,
    set_muon_weight_decay,
)

# What 5 Polar Express steps guarantee (exact arithmetic) for singular values in [1e-3, 1] of
# the normalized input: [0.859, 1.141]; a little slack for fp32 rounding.
BAND = (0.85, 1.15)


def test_polar_express_schedule_maps_the_design_interval_into_the_band() -> None:
    x = np.linspace(1e-3, 1.0, 100_001)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        x = a * x + b * x**3 + c * x**5
    assert BAND[0] < x.min() and x.max() < BAND[1]


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (8, 48, 160)])
def test_orthogonalize_puts_singular_values_near_one(shape: tuple[int, ...]) -> None:
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3.0
    ortho = orthogonalize(G, steps=5)
    assert ortho.shape == G.shape and ortho.dtype == torch.float32
    s = torch.linalg.svdvals(ortho)
    assert BAND[0] < s.min() and s.max() < BAND[1]
    # more steps continue with the convergent quintic and tighten the band
    s7 = torch.linalg.svdvals(orthogonalize(G, steps=7))
    assert (s7 - 1).abs().max() < 0.02


def _one_step(W0: torch.Tensor, grad: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """The change Muon makes to a copy of W0 in one step with gradient grad."""
    W = torch.nn.Parameter(W0.clone())
    opt = Muon([W], **kwargs)  # type: ignore[arg-type]
    W.grad = grad.clone()
    opt.step()
    return (W0 - W).detach()


@pytest.mark.parametrize(("rows", "cols"), [(32, 96), (96, 32)])
def test_muon_update_has_near_equal_singular_values(rows: int, cols: int) -> None:
    gen = torch.Generator().manual_seed(1)
    W0, grad = torch.randn(rows, cols, generator=gen), torch.randn(rows, cols, generator=gen)
    delta = _one_step(W0, grad, lr=0.1, momentum=0.0, beta2=0.0)
    s = torch.linalg.svdvals(delta) / 0.1
    scale = max(1.0, rows / cols) ** 0.5  # tall matrices get a proportionally larger step
    assert BAND[0] * scale < s.min() and s.max() < BAND[1] * scale
    # the direction descends: <delta, grad> > 0
    assert (delta * grad).sum() > 0


def test_normuon_equalizes_neuron_norms_and_keeps_the_update_norm() -> None:
    gen = torch.Generator().manual_seed(2)
    W0 = torch.randn(96, 32, generator=gen)
    grad = torch.randn(96, 32, generator=gen) * torch.linspace(0.1, 3.0, 96)[:, None]  # uneven rows
    plain = _one_step(W0, grad, lr=0.1, momentum=0.0, beta2=0.0)
    normed = _one_step(W0, grad, lr=0.1, momentum=0.0, beta2=0.95)
    assert not torch.allclose(plain, normed)
    torch.testing.assert_close(normed.norm(), plain.norm(), rtol=1e-4, atol=0)
    row_norms = normed.norm(dim=1)
    assert row_norms.std() / row_norms.mean() < 1e-3  # first step: every row gets the same RMS
    plain_rows = plain.norm(dim=1)
    assert plain_rows.std() / plain_rows.mean() > 0.05


def test_cautious_weight_decay_only_where_update_and_weight_agree_in_sign() -> None:
    gen = torch.Generator().manual_seed(3)
    W0, grad = torch.randn(32, 48, generator=gen), torch.randn(32, 48, generator=gen)
    lr, wd = 0.05, 0.5
    no_decay = _one_step(W0, grad, lr=lr, momentum=0.0, weight_decay=0.0)
    decay = _one_step(W0, grad, lr=lr, momentum=0.0, weight_decay=wd)
    agree = (no_decay * W0) > 0  # no_decay is the update that was subtracted
    assert 0.2 < agree.float().mean() < 0.8
    torch.testing.assert_close(decay - no_decay, lr * wd * W0 * agree, rtol=1e-5, atol=1e-6)


def test_muon_momentum_accumulates_and_nesterov_looks_ahead() -> None:
    W = torch.nn.Parameter(torch.zeros(16, 16))
    opt = Muon([W], lr=0.1, momentum=0.9, beta2=0.0)
    W.grad = torch.eye(16)
    opt.step()
    W.grad = torch.zeros(16, 16)
    before = W.detach().clone()
    opt.step()  # momentum alone keeps moving the weights in the earlier gradient's direction
    assert (before - W.detach()).diagonal().min() > 0


def test_muon_groups_parameters_by_shape_and_rejects_non_matrices() -> None:
    a, b, c = (torch.nn.Parameter(torch.randn(*s)) for s in [(8, 4), (4, 8), (8, 4)])
    opt = Muon([a, b, c], lr=0.1)
    shapes = [[tuple(p.shape) for p in group["params"]] for group in opt.param_groups]
    assert sorted(shapes) == [[(4, 8)], [(8, 4), (8, 4)]]
    for p in (a, b, c):
        p.grad = torch.randn_like(p)
    opt.step()
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.randn(8))])


def _tiny_gpt(n_embd: int = 64) -> GPT:
    model = GPT(GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=n_embd))
    model.init_weights()
    return model


def test_build_optimizers_sets_the_reference_learning_rates() -> None:
    model = _tiny_gpt(n_embd=192)
    optimizers = build_optimizers(
        model, matrix_lr=0.04, embedding_lr=0.6, unembedding_lr=0.004, scalar_lr=0.5,
        weight_decay=0.2, model_dim=192,
    )  # fmt: skip
    muon, adamw = optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    covered = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())
    lrs = {g["name"]: g["lr"] for g in adamw.param_groups}
    width = (192 / 768) ** -0.5  # = 2
    assert lrs == pytest.approx(
        {"unembedding": 0.004 * width, "embedding": 0.6 * width, "resid_lambdas": 0.005, "x0_lambdas": 0.5}
    )
    assert all(g["eps"] == 1e-10 and g["weight_decay"] == 0.0 for g in adamw.param_groups)
    assert all(g["lr"] == 0.04 and g["weight_decay"] == 0.2 for g in muon.param_groups)
    assert all(g["initial_lr"] == g["lr"] for opt in optimizers for g in opt.param_groups)


def test_schedule_helpers_set_lr_momentum_and_weight_decay() -> None:
    model = _tiny_gpt()
    optimizers = build_optimizers(
        model, matrix_lr=0.04, embedding_lr=0.6, unembedding_lr=0.004, scalar_lr=0.5,
        weight_decay=0.2, model_dim=64,
    )  # fmt: skip
    set_lr_multiplier(optimizers, 0.25)
    assert all(g["lr"] == pytest.approx(0.25 * g["initial_lr"]) for o in optimizers for g in o.param_groups)
    set_lr_multiplier(optimizers, 1.0)
    assert all(g["lr"] == g["initial_lr"] for o in optimizers for g in o.param_groups)
    set_muon_momentum(optimizers, 0.85)
    set_muon_weight_decay(optimizers, 0.1)
    muon, adamw = optimizers
    assert all(g["momentum"] == 0.85 and g["weight_decay"] == 0.1 for g in muon.param_groups)
    assert all("momentum" not in g and g["weight_decay"] == 0.0 for g in adamw.param_groups)


def test_zero_lr_multiplier_freezes_the_model() -> None:
    model = _tiny_gpt()
    optimizers = build_optimizers(
        model, matrix_lr=0.04, embedding_lr=0.6, unembedding_lr=0.004, scalar_lr=0.5,
        weight_decay=0.2, model_dim=64,
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_lr_multiplier(optimizers, 0.0)
    idx = torch.randint(0, 64, (2, 32))
    model(idx, idx).backward()
    for opt in optimizers:
        opt.step()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
