"""A small modern GPT, read top to bottom: attention -> MLP -> Block -> GPTConfig -> GPT.

Follows the karpathy/autoresearch (nanochat) recipe: RoPE, QK-norm, parameter-free RMSNorm,
ReLU^2 MLP, value embeddings on alternating layers with an input-dependent gate, per-layer
residual scalars (resid_lambdas / x0_lambdas), sliding-window ("S") and full ("L") causal
attention layers, tanh logit soft-capping and an untied head.

Attention windows use the FlashAttention convention window_size=(w, 0): query i sees keys j with
0 <= i - j <= w (w + 1 keys including itself). Kernels:
  - "L" layers: F.scaled_dot_product_attention(is_causal=True) (flash on GPU);
  - "S" layers: SDPA with a boolean band mask (CPU, or attention="sdpa"), or FlexAttention with a
    block mask on CUDA (attention="auto"/"flex"); flex is imported only when it is used.
Masks are built once per sequence length, outside compiled regions (init_weights prebuilds them for
config.sequence_len), so the compiled forward has no graph break.

Shapes: B batch, T time, C n_embd, H query heads, Hkv key/value heads, D head_dim, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# One attention layer's plan: ("causal", None) | ("band", bool mask (T, T)) | ("flex", BlockMask)
AttentionSpec = tuple[str, Any]


def norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, T, H, D) by position angles; cos/sin (T, D/2)."""
    d = x.size(-1) // 2
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def sliding_window_mask(T: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """(T, T) bool, True where query i may attend key j: 0 <= i - j <= window."""
    pos = torch.arange(T, device=device)
    offset = pos[:, None] - pos[None, :]  # (T, T): i - j
    return (offset >= 0) & (offset <= window)


def _flex_block_mask(T: int, window: int, device: torch.device) -> Any:
    """FlexAttention BlockMask for the same band as sliding_window_mask (window >= T - 1: causal)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def band(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        offset = q_idx - kv_idx
        return (offset >= 0) & (offset <= window)

    return create_block_mask(band, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


# FlexAttention is only fast when compiled; on CUDA it goes through torch.compile (nested inside a
# compiled model, dynamo simply inlines it). Set by GPT._build_attention_plan, never at import.
_flex_attention: Callable[..., Tensor] | None = None


def _load_flex_attention(device: torch.device) -> None:
    global _flex_attention
    from torch.nn.attention.flex_attention import flex_attention

    if device.type == "cuda":
        if _flex_attention is None or _flex_attention is flex_attention:
            _flex_attention = torch.compile(flex_attention, dynamic=False)
    elif _flex_attention is None:
        _flex_attention = flex_attention  # CPU: the eager reference path (tests, debugging)


def attend(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec) -> Tensor:
    """Causal attention: q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, H, T, D)."""
    kind, mask = spec
    gqa = q.size(1) != k.size(1)
    if kind == "flex":
        assert _flex_attention is not None
        return _flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
    if kind == "band":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)


def has_value_embedding(layer_idx: int, n_layer: int) -> bool:
    """Value embeddings on alternating layers, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        C, D = config.n_embd, self.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(self.n_head * D, C, bias=False)
        # Value residual (ResFormer-style): v += gate(x) * value_embedding(token), one gate per kv
        # head, read from the first few channels of x; 2 * sigmoid(0) = 1 at init (neutral).
        self.gate_channels = min(32, C)
        self.ve_gate = (
            nn.Linear(self.gate_channels, self.n_kv_head, bias=False)
            if has_value_embedding(layer_idx, config.n_layer)
            else None
        )

    def forward(self, x: Tensor, ve: Tensor | None, cos: Tensor, sin: Tensor, spec: AttentionSpec) -> Tensor:
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        if ve is not None and self.ve_gate is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.gate_channels]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).to(v.dtype)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        q, k = q.to(v.dtype), k.to(v.dtype)  # no-op unless autocast kept the norm in fp32
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), spec)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2: (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, ve: Tensor | None, cos: Tensor, sin: Tensor, spec: AttentionSpec) -> Tensor:
        x = x + self.attn(norm(x), ve, cos, sin, spec)
        return x + self.mlp(norm(x))


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4  # query heads; head_dim = n_embd // n_head
    n_kv_head: int = 4  # key/value heads (GQA when < n_head; n_head % n_kv_head == 0)
    n_embd: int = 512
    window_pattern: str = "SSSL"  # per layer, cycled: S = sliding window, L = full; last layer is L
    short_window: int = 0  # window of "S" layers; 0 -> sequence_len // 2 (the reference)
    softcap: float = 15.0  # logits -> softcap * tanh(logits / softcap); 0 disables
    attention: str = "auto"  # auto (flex for S layers on CUDA, SDPA otherwise) | sdpa | flex

    def __post_init__(self) -> None:
        problems = []
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            problems.append(f"n_embd ({self.n_embd}) / n_head ({self.n_head}) must be an even integer")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            problems.append(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if not self.window_pattern or set(self.window_pattern.upper()) - set("SL"):
            problems.append(f"window_pattern ({self.window_pattern!r}) must be letters S and L")
        if self.attention not in ("auto", "sdpa", "flex"):
            problems.append(f"attention ({self.attention!r}) must be auto, sdpa or flex")
        if self.short_window < 0 or self.softcap < 0 or min(self.sequence_len, self.n_layer) < 1:
            problems.append("short_window and softcap must be >= 0, sequence_len and n_layer >= 1")
        if problems:
            raise ValueError("GPTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def window_sizes(self) -> list[int]:
        """Per-layer attention window (keys back from the query); the last layer is always full."""
        long = self.sequence_len
        short = self.short_window or self.sequence_len // 2
        pattern = self.window_pattern.upper()
        sizes = [short if pattern[i % len(pattern)] == "S" else long for i in range(self.n_layer)]
        sizes[-1] = long
        return sizes


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.window_sizes = config.window_sizes()
        kv_dim = config.n_kv_head * config.head_dim
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.value_embeds = nn.ModuleDict(
            {
                str(i): nn.Embedding(config.vocab_size, kv_dim)
                for i in range(config.n_layer)
                if has_value_embedding(i, config.n_layer)
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied
        # x <- resid_lambdas[i] * x + x0_lambdas[i] * x0 before block i (x0: normed embeddings)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        cos, sin = self._rotary_tables(device=None)  # meta under `with torch.device("meta")`
        self.register_buffer("cos", cos, persistent=False)  # (sequence_len, D/2)
        self.register_buffer("sin", sin, persistent=False)
        self._attention_plans: dict[int, list[AttentionSpec]] = {}  # T -> one spec per layer

    def _rotary_tables(self, device: torch.device | None, base: float = 10000.0) -> tuple[Tensor, Tensor]:
        D = self.config.head_dim
        inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float32, device=device) / D)  # (D/2,)
        t = torch.arange(self.config.sequence_len, dtype=torch.float32, device=device)
        angles = torch.outer(t, inv_freq)  # (T, D/2)
        return angles.cos(), angles.sin()

    def _blocks(self) -> list[Block]:
        return cast(list[Block], list(self.blocks))

    def _apply(self, fn: Any, recurse: bool = True) -> GPT:
        self._attention_plans.clear()  # masks live on the old device; rebuilt lazily
        return super()._apply(fn, recurse=recurse)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every parameter and buffer (call after model.to_empty(device=...))."""
        C = self.config.n_embd
        bound = math.sqrt(3.0 / C)  # uniform(-b, b) has std 1/sqrt(C)
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self._blocks():
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate 2 * sigmoid(0) = 1
        for ve in self.value_embeds.values():
            nn.init.uniform_(cast(nn.Embedding, ve).weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        self.cos, self.sin = self._rotary_tables(device=self.lm_head.weight.device)
        self._attention_plans.clear()
        self._build_attention_plan(self.config.sequence_len, self.lm_head.weight.device)

    def _use_flex(self, device: torch.device, full: bool) -> bool:
        if self.config.attention == "flex":
            return True
        return self.config.attention == "auto" and device.type == "cuda" and not full

    def attention_plan(self, T: int, device: torch.device | str | None = None) -> list[AttentionSpec]:
        """Per layer, how attention runs at sequence length T: ("causal", None), ("band", bool mask
        (T, T)) or ("flex", BlockMask); cached per T, built on first use."""
        plan = self._attention_plans.get(T)
        if plan is None:
            plan = self._build_attention_plan(T, torch.device(device or self.cos.device))
        return plan

    @torch.compiler.disable
    def _build_attention_plan(self, T: int, device: torch.device) -> list[AttentionSpec]:
        """Masks are shared between layers; built outside any compiled region (a graph break only
        when a new T appears; init_weights prebuilds config.sequence_len)."""
        masks: dict[tuple[str, int], Any] = {}
        plan: list[AttentionSpec] = []
        for window in self.window_sizes:
            window = min(window, T - 1)
            full = window == T - 1  # the band covers every earlier position: plain causal
            if self._use_flex(device, full):
                _load_flex_attention(device)
                if ("flex", window) not in masks:
                    masks["flex", window] = _flex_block_mask(T, window, device)
                plan.append(("flex", masks["flex", window]))
            elif full:
                plan.append(("causal", None))
            else:
                if ("band", window) not in masks:
                    masks["band", window] = sliding_window_mask(T, window, device)
                plan.append(("band", masks["band", window]))
        self._attention_plans[T] = plan
        return plan

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """idx (B, T) int64 -> logits (B, T, V) float32, or the cross-entropy (nats) with targets:
        a scalar mean (reduction="mean") or per token (B, T) (reduction="none"); target -1 is ignored."""
        B, T = idx.shape
        if self.cos.size(0) < T:
            raise ValueError(f"sequence length {T} > config.sequence_len {self.cos.size(0)}")
        plan = self._attention_plans.get(T)
        if plan is None:
            plan = self._build_attention_plan(T, idx.device)
        cos, sin = self.cos[:T], self.sin[:T]  # (T, D/2)

        x = self.wte(idx)  # (B, T, C)
        if torch.is_autocast_enabled(x.device.type):
            # keep the residual stream in the autocast dtype (bf16), as the blocks' outputs are
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = x0 = norm(x)
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None  # (B, T, Hkv*D)
            x = block(x, ve, cos, sin, plan[i])
        x = norm(x)

        logits = self.lm_head(x).float()  # (B, T, V)
        if self.config.softcap > 0:
            logits = self.config.softcap * torch.tanh(logits / self.config.softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-1, reduction=reduction
        )
        return loss.view(B, T) if reduction == "none" else loss

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups; every parameter appears exactly once.

        matrix: every weight inside the blocks (2-D: attention, MLP, value-embedding gates) -> Muon;
        embedding: token + value embeddings; unembedding: lm_head; scalar: per-layer lambdas."""
        groups = {
            "matrix": list(self.blocks.parameters()),
            "embedding": [self.wte.weight, *self.value_embeds.parameters()],
            "unembedding": [self.lm_head.weight],
            "scalar": [self.resid_lambdas, self.x0_lambdas],
        }
        return cast(dict[str, list[nn.Parameter]], groups)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 per matmul weight (fwd + bwd; embedding lookups and scalars
        excluded) plus attention, 12 * H * D * (keys visible per query: window, capped at T), per
        layer, counted the way the reference counts it so MFU figures compare."""
        groups = self.param_groups()
        n_matmul = sum(p.numel() for key in ("matrix", "unembedding") for p in groups[key])
        cfg = self.config
        T = cfg.sequence_len
        attention = sum(12 * cfg.n_head * cfg.head_dim * min(w, T) for w in self.window_sizes)
        return float(6 * n_matmul + attention)
