"""model/gpt.py on CPU: shapes, losses, causality, attention windows, init, groups, FLOPs, training."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from model.gpt import GPT, GPTConfig, sliding_window_mask
from model.optim import build_optimizers

VOCAB = 97


def make_model(seed: int = 0, randomize: bool = False, **overrides: object) -> GPT:
    """A small GPT built the way train.py builds it: on meta, then to_empty + init_weights."""
    fields = dict(sequence_len=64, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    fields.update(overrides)
    with torch.device("meta"):
        model = GPT(GPTConfig(**fields))  # type: ignore[arg-type]
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    model.init_weights()
    if randomize:  # the zero-initialised projections make every block the identity at init
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


def tokens(B: int = 2, T: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_dtypes() -> None:
    model = make_model(randomize=True)
    idx = tokens(3, 40)
    logits = model(idx)
    assert logits.shape == (3, 40, VOCAB) and logits.dtype == torch.float32
    loss = model(idx, idx)
    assert loss.shape == () and loss.dtype == torch.float32
    per_token = model(idx, idx, reduction="none")
    assert per_token.shape == (3, 40) and per_token.dtype == torch.float32


def test_per_token_losses_average_to_the_mean_and_ignore_minus_one() -> None:
    model = make_model(randomize=True)
    idx, targets = tokens(2, 64, seed=1), tokens(2, 64, seed=2)
    targets[0, :10] = -1
    per_token = model(idx, targets, reduction="none")
    assert torch.all(per_token[0, :10] == 0)
    mean = model(idx, targets)
    torch.testing.assert_close(per_token.sum() / (targets != -1).sum(), mean)


@pytest.mark.parametrize("pattern", ["SL", "L"])
def test_changing_a_token_never_changes_earlier_logits(pattern: str) -> None:
    model = make_model(randomize=True, window_pattern=pattern, short_window=8, n_kv_head=1)
    idx = tokens(1, 64)
    changed = idx.clone()
    t = 30
    changed[0, t] = (idx[0, t] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[0, :t], after[0, :t], rtol=0, atol=0)
    assert (before[0, t] - after[0, t]).abs().max() > 1e-3


def test_sliding_window_mask_matches_an_explicit_reference() -> None:
    for T, window in [(1, 0), (7, 0), (16, 3), (16, 15), (33, 8)]:
        expected = torch.zeros(T, T, dtype=torch.bool)
        for i in range(T):
            for j in range(T):
                expected[i, j] = j <= i and i - j <= window
        assert torch.equal(sliding_window_mask(T, window), expected)


def _sliding_window_layer(attention: str) -> tuple[GPT, list[tuple[str, object]]]:
    # the last layer is always full, so the window is checked on layer 0 of an "SL" model
    model = make_model(randomize=True, window_pattern="S", short_window=8, attention=attention)
    assert model.window_sizes == [8, 64]
    return model, model.attention_plan(64)


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_an_s_layer_never_sees_beyond_its_window(attention: str) -> None:
    model, plan = _sliding_window_layer(attention)
    attn, (cos, sin) = model.blocks[0].attn, (model.cos[:64], model.sin[:64])
    assert plan[0][0] == ("flex" if attention == "flex" else "band")
    x = torch.randn(1, 64, 32)
    t, window = 40, 8
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is unfused
        base = attn(x, None, cos, sin, plan[0])
        outside, inside = x.clone(), x.clone()
        outside[0, t - window - 1] += 1.0  # one step beyond the window of query t
        inside[0, t - window] += 1.0  # the oldest key query t still sees
        y_out, y_in = attn(outside, None, cos, sin, plan[0]), attn(inside, None, cos, sin, plan[0])
    torch.testing.assert_close(y_out[0, t], base[0, t], rtol=0, atol=1e-6)
    assert (y_in[0, t] - base[0, t]).abs().max() > 1e-3


def test_flex_and_sdpa_paths_agree() -> None:
    sdpa = make_model(randomize=True, window_pattern="SSL", n_layer=3, short_window=8, n_kv_head=1)
    flex = make_model(window_pattern="SSL", n_layer=3, short_window=8, n_kv_head=1, attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    idx = tokens(2, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(flex(idx), sdpa(idx), rtol=1e-4, atol=1e-4)


def test_the_cpu_path_never_imports_flex_attention() -> None:
    code = (
        "import sys, torch; from model.gpt import GPT, GPTConfig\n"
        "m = GPT(GPTConfig(sequence_len=32, vocab_size=50, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))\n"
        "m.init_weights(); m(torch.zeros(1, 32, dtype=torch.long))\n"
        "assert 'torch.nn.attention.flex_attention' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_meta_init_is_deterministic_and_starts_at_uniform_loss() -> None:
    a, b, c = make_model(seed=0), make_model(seed=0), make_model(seed=1)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.wte.weight, c.wte.weight)
    torch.testing.assert_close(a.cos, b.cos)
    loss = a(tokens(4, 64), tokens(4, 64, seed=3))
    assert math.isfinite(loss.item())
    assert abs(loss.item() - math.log(VOCAB)) < 0.02


def test_param_groups_cover_every_parameter_exactly_once() -> None:
    model = make_model(n_layer=3)
    groups = model.param_groups()
    assert set(groups) == {"matrix", "embedding", "unembedding", "scalar"}
    grouped = [id(p) for params in groups.values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert all(p.ndim == 2 for p in groups["matrix"])
    assert all(p.ndim <= 1 for p in groups["scalar"])
    assert len(groups["embedding"]) == 1 + 2  # token table + value embeddings on layers 0 and 2
    assert groups["unembedding"] == [model.lm_head.weight]
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_reference_config_has_the_reference_parameter_count() -> None:
    with torch.device("meta"):
        model = GPT(GPTConfig())  # depth 8, n_embd 512, 4 heads of 128, vocab 8192, seq 2048
    assert round(model.num_params() / 1e6, 1) == 50.3
    assert model.window_sizes == [1024, 1024, 1024, 2048, 1024, 1024, 1024, 2048]


def test_estimate_flops_counts_matmuls_and_windowed_attention() -> None:
    def flops(pattern: str) -> float:
        with torch.device("meta"):
            return GPT(GPTConfig(window_pattern=pattern)).estimate_flops()

    with torch.device("meta"):
        model = GPT(GPTConfig())
    n_matmul = sum(p.numel() for key in ("matrix", "unembedding") for p in model.param_groups()[key])
    assert 6 * n_matmul < flops("SSSL") < flops("L") < 6 * model.num_params()
    # full attention in all 8 layers: 12 * H * D * T per layer
    assert flops("L") - 6 * n_matmul == 8 * 12 * 4 * 128 * 2048


def test_softcap_bounds_the_logits() -> None:
    capped, uncapped = make_model(softcap=15.0), make_model(softcap=0.0)
    with torch.no_grad():
        for model in (capped, uncapped):
            model.lm_head.weight.normal_(0, 10.0)
    idx = tokens()
    assert capped(idx).abs().max() <= 15.0
    assert uncapped(idx).abs().max() > 15.0


def test_bf16_autocast_matches_fp32() -> None:
    model = make_model(randomize=True, window_pattern="SL", short_window=8)
    idx = tokens()
    fp32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(idx, idx)
        logits = model(idx)
    assert logits.dtype == torch.float32
    assert abs(bf16.item() - fp32.item()) < 0.05 * fp32.item()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="window_pattern"):
        GPTConfig(window_pattern="SXL")
    with pytest.raises(ValueError, match="attention"):
        GPTConfig(attention="flash")


def test_a_tiny_model_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = make_model(sequence_len=64, n_layer=2, n_embd=64, window_pattern="SL", short_window=16)
    optimizers = build_optimizers(
        model, matrix_lr=0.04, embedding_lr=0.6, unembedding_lr=0.004, scalar_lr=0.5,
        weight_decay=0.0, model_dim=64,
    )  # fmt: skip
    batch = tokens(4, 65, seed=5)
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(30):
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.05)
    assert losses[-1] < 0.25 * losses[0]


@pytest.mark.slow
def test_compiles_without_graph_breaks() -> None:
    model = make_model(randomize=True, window_pattern="SL", short_window=8, n_kv_head=1)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx, idx), model(idx, idx), rtol=1e-4, atol=1e-4)
