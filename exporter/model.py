"""The canonical PyTorch transformer: one definition for dense and MoE decoder-only models.

Reads top to bottom: norm → rotary embedding → attention → SwiGLU → MoE → block → model.
Shapes: B batch, T tokens, D hidden, H heads, K kv-heads, Hd head dim, E experts, k top-k.
The state-dict names of this module are the canonical tensor names of a bundle source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.spec import ModelSpec, RoutingSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(spec: ModelSpec, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each [T, Hd/2]."""
    half = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float() / spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** half)  # [Hd/2]
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, Hd/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, heads, T, Hd]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d, hd = spec.hidden_size, spec.head_dim
        self.wq = nn.Linear(d, spec.n_heads * hd, bias=spec.attention_bias)
        self.wk = nn.Linear(d, spec.n_kv_heads * hd, bias=spec.attention_bias)
        self.wv = nn.Linear(d, spec.n_kv_heads * hd, bias=spec.attention_bias)
        self.wo = nn.Linear(spec.n_heads * hd, d, bias=False)
        if spec.qk_norm != "none":
            per_head = spec.qk_norm == "head"
            self.q_norm = RMSNorm(hd if per_head else spec.n_heads * hd, spec.norm_eps)
            self.k_norm = RMSNorm(hd if per_head else spec.n_kv_heads * hd, spec.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: list[torch.Tensor] | None) -> torch.Tensor:
        b, t, _ = x.shape
        s = self.spec
        q, k = self.wq(x), self.wk(x)  # [B, T, H·Hd], [B, T, K·Hd]
        if s.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, t, s.n_heads, s.head_dim).transpose(1, 2)  # [B, H, T, Hd]
        k = k.view(b, t, s.n_kv_heads, s.head_dim).transpose(1, 2)  # [B, K, T, Hd]
        if s.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.wv(x).view(b, t, s.n_kv_heads, s.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            if cache:
                past = cache[0].shape[2]
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=s.scale,
                                             enable_gqa=s.n_heads != s.n_kv_heads)
        return self.wo(out.transpose(1, 2).reshape(b, t, s.n_heads * s.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def route(logits: torch.Tensor, routing: RoutingSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert weights and indices, each [N, k], from router logits [N, E]."""
    scores = logits.float().softmax(-1) if routing.score_func == "softmax" else logits.float().sigmoid()
    weights, idx = scores.topk(routing.top_k, dim=-1)
    if routing.normalize_top_k:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights * routing.scaling_factor, idx


class Experts(nn.Module):
    """E SwiGLU experts stacked as gate/up [E, I, D] and down [E, D, I]."""

    def __init__(self, n_experts: int, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.up = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.down = nn.Parameter(torch.empty(n_experts, dim, hidden))
        for w in (self.gate, self.up, self.down):
            nn.init.normal_(w, std=dim ** -0.5)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)  # [N, D]
        for e in idx.unique().tolist():
            rows, slot = (idx == e).nonzero(as_tuple=True)
            h = F.silu(x[rows] @ self.gate[e].T) * (x[rows] @ self.up[e].T)
            out.index_add_(0, rows, (h @ self.down[e].T) * weights[rows, slot, None])
        return out


class MoE(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        r = spec.routing
        self.routing = r
        self.router = nn.Linear(spec.hidden_size, r.n_experts, bias=False)
        self.experts = Experts(r.n_experts, spec.hidden_size, spec.expert_intermediate_size)
        self.shared = SwiGLU(spec.hidden_size, r.shared_expert_size) if r.shared_expert_size else None
        self.shared_gate = nn.Linear(spec.hidden_size, 1, bias=False) if r.shared_expert_gate else None
        self.last_router_probs: torch.Tensor | None = None  # [N, E], kept for a balancing loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, D]
        logits = self.router(x.float())  # the router stays float32
        self.last_router_probs = logits.softmax(-1)
        weights, idx = route(logits, self.routing)
        out = self.experts(x, weights.to(x.dtype), idx)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = shared * torch.sigmoid(self.shared_gate(x))
            out = out + shared
        return out.reshape(shape)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, kind: str):
        super().__init__()
        self.spec = spec
        self.attn_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attn = Attention(spec)
        self.ffn_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.ffn = MoE(spec) if kind == "moe" else SwiGLU(spec.hidden_size, spec.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: list[torch.Tensor] | None) -> torch.Tensor:
        m = self.spec.residual_multiplier
        x = x + m * self.attn(self.attn_norm(x), cos, sin, cache)
        return x + m * self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """The canonical model; `forward(tokens [B, T], caches)` → logits [B, T, V]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec.validate()
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, kind) for kind in spec.layer_kinds)
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.lm_head = None if spec.tie_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def new_cache(self) -> list[list[torch.Tensor]]:
        """An empty KV cache, one [k, v] pair per layer, filled in place by `forward`."""
        return [[] for _ in self.layers]

    def forward(self, tokens: torch.Tensor, cache: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        past = cache[0][0].shape[2] if cache and cache[0] else 0
        positions = torch.arange(past, past + tokens.shape[1], device=tokens.device)
        cos, sin = rope_tables(self.spec, positions)
        x = self.embed(tokens) * self.spec.embedding_multiplier
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if cache is None else cache[i])
        x = self.norm(x)
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return (x @ head.T) / self.spec.logits_divisor

    def moe_layers(self) -> list[MoE]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoE)]


def canonical_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name → shape, for every tensor of `spec`'s model (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = Transformer(spec)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}
