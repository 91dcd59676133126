"""Typed model description shared by the exporter and the runtime (part of the bundle contract).

`ModelSpec` says everything the runtime needs to run a canonical decoder-only transformer,
dense or Mixture-of-Experts; `RoutingSpec` says how an MoE layer picks and weighs experts.
Both are frozen dataclasses; `from_dict` ignores unknown keys so newer manifests stay readable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SCORE_FUNCS = ("softmax", "sigmoid")
QK_NORMS = ("none", "head", "full")
LAYER_KINDS = ("dense", "moe")


class SpecError(ValueError):
    """A model or routing description that is inconsistent or unsupported."""


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


@dataclass(frozen=True)
class RoutingSpec:
    """How an MoE layer turns router logits into expert weights.

    scores = score_func(logits); the top_k experts by score are chosen (ties: lower index);
    their weights are the scores, renormalised to sum to one if `normalize_top_k`, times
    `scaling_factor`. An optional always-on shared expert (SwiGLU of `shared_expert_size`)
    is added, multiplied by sigmoid(x @ w) when `shared_expert_gate` is set.
    """

    n_experts: int
    top_k: int
    score_func: str = "softmax"
    normalize_top_k: bool = True
    scaling_factor: float = 1.0
    shared_expert_size: int = 0
    shared_expert_gate: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingSpec:
        return cls(**_known_fields(cls, data))

    def validate(self) -> None:
        _require(self.n_experts >= 1, f"n_experts must be >= 1, got {self.n_experts}")
        _require(1 <= self.top_k <= self.n_experts,
                 f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        _require(self.score_func in SCORE_FUNCS,
                 f"score_func must be one of {SCORE_FUNCS}, got {self.score_func!r}")
        _require(math.isfinite(self.scaling_factor), "scaling_factor must be finite")
        _require(self.shared_expert_size >= 0, "shared_expert_size must be >= 0")
        _require(not self.shared_expert_gate or self.shared_expert_size > 0,
                 "shared_expert_gate needs a shared expert (shared_expert_size > 0)")


@dataclass(frozen=True)
class ModelSpec:
    """A canonical decoder-only transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU.

    `layer_kinds[i]` is "dense" (a SwiGLU of `intermediate_size`) or "moe" (`routing.n_experts`
    SwiGLU experts of `expert_intermediate_size`). The multipliers cover families that scale
    the embedding, each residual branch, the attention scores and the logits.
    """

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    layer_kinds: tuple[str, ...]
    max_seq_len: int = 2048
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    expert_intermediate_size: int = 0
    routing: RoutingSpec | None = None
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)
    logits_divisor: float = 1.0
    qk_norm: str = "none"  # RMSNorm of q and k before RoPE: per head ("head") or over all heads ("full")
    attention_bias: bool = False  # biases on the q, k and v projections
    activation: str = "silu"
    norm: str = "rmsnorm"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build from a manifest/JSON dict; unknown keys are ignored."""
        known = _known_fields(cls, data)
        known["layer_kinds"] = tuple(known.get("layer_kinds", ()))
        if known.get("routing") is not None:
            known["routing"] = RoutingSpec.from_dict(known["routing"])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_kinds"] = list(self.layer_kinds)
        return data

    @property
    def is_moe(self) -> bool:
        return "moe" in self.layer_kinds

    @property
    def scale(self) -> float:
        """The factor applied to q·k before the softmax."""
        return self.attention_scale if self.attention_scale is not None else self.head_dim ** -0.5

    def validate(self) -> ModelSpec:
        """Raise `SpecError` naming the first inconsistency; return self when valid."""
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                     "head_dim", "max_seq_len"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")
        _require(self.n_heads % self.n_kv_heads == 0,
                 f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        _require(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        _require(len(self.layer_kinds) == self.n_layers,
                 f"layer_kinds has {len(self.layer_kinds)} entries for {self.n_layers} layers")
        bad = sorted(set(self.layer_kinds) - set(LAYER_KINDS))
        _require(not bad, f"unknown layer kind(s) {bad}; supported: {LAYER_KINDS}")
        _require(self.qk_norm in QK_NORMS, f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        _require(self.activation == "silu", f"unsupported activation {self.activation!r} (supported: silu)")
        _require(self.norm == "rmsnorm", f"unsupported norm {self.norm!r} (supported: rmsnorm)")
        _require(self.norm_eps > 0 and self.rope_theta > 0, "norm_eps and rope_theta must be positive")
        if "dense" in self.layer_kinds:
            _require(self.intermediate_size > 0, "dense layers need intermediate_size > 0")
        if self.is_moe:
            _require(self.routing is not None, "MoE layers need a routing spec")
            _require(self.expert_intermediate_size > 0, "MoE layers need expert_intermediate_size > 0")
            self.routing.validate()
        return self
