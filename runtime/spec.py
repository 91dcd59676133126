"""Typed model description shared by the exporter and the runtime (part of the bundle contract).

`ModelSpec` says everything the runtime needs to run a canonical decoder-only transformer,
dense or Mixture-of-Experts; `RoutingSpec` says how an MoE layer picks and weighs experts.
Both are frozen dataclasses; `from_dict` ignores unknown keys (a bundle's manifest is checked
for exact keys before it gets here); `validate` checks every field's type and bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import checks
from .errors import MoedgeError

SCORE_FUNCS = ("softmax", "sigmoid")
QK_NORMS = ("none", "head", "full")
LAYER_KINDS = ("dense", "moe")


MAX_DIM = 1 << 20  # hidden, FFN and expert widths, context length
MAX_VOCAB = 1 << 24
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_HEAD_DIM = 2048
MAX_EXPERTS = 4096
MULTIPLIER_RANGE = (1e-6, 1e6)  # embedding/residual multipliers, attention scale, logits divisor, scaling


class SpecError(MoedgeError, ValueError):
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
        _require(isinstance(data, dict), f"routing must be an object, got {type(data).__name__}")
        return cls(**_known_fields(cls, data))

    def validate(self) -> None:
        checks.integer(self.n_experts, "routing.n_experts", 1, MAX_EXPERTS, SpecError)
        checks.integer(self.top_k, "routing.top_k", 1, self.n_experts, SpecError)
        checks.choice(self.score_func, "routing.score_func", SCORE_FUNCS, SpecError)
        checks.boolean(self.normalize_top_k, "routing.normalize_top_k", SpecError)
        checks.number(self.scaling_factor, "routing.scaling_factor", *MULTIPLIER_RANGE, SpecError)
        checks.integer(self.shared_expert_size, "routing.shared_expert_size", 0, MAX_DIM, SpecError)
        checks.boolean(self.shared_expert_gate, "routing.shared_expert_gate", SpecError)
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
        """Build from a manifest/JSON dict; unknown keys are ignored. Call `validate` next."""
        _require(isinstance(data, dict), f"the model spec must be an object, got {type(data).__name__}")
        known = _known_fields(cls, data)
        kinds = known.get("layer_kinds", ())
        _require(isinstance(kinds, (list, tuple)), f"layer_kinds must be a list, got {type(kinds).__name__}")
        known["layer_kinds"] = tuple(kinds)
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
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the MoE layers."""
        return tuple(i for i, kind in enumerate(self.layer_kinds) if kind == "moe")

    @property
    def scale(self) -> float:
        """The factor applied to q·k before the softmax."""
        return self.attention_scale if self.attention_scale is not None else self.head_dim ** -0.5

    def validate(self) -> ModelSpec:
        """Raise `SpecError` naming the first bad or inconsistent field; return self when valid."""
        for name, lo, hi in (("vocab_size", 1, MAX_VOCAB), ("hidden_size", 1, MAX_DIM), ("n_layers", 1, MAX_LAYERS),
                             ("n_heads", 1, MAX_HEADS), ("head_dim", 2, MAX_HEAD_DIM), ("max_seq_len", 1, MAX_DIM),
                             ("intermediate_size", 0, MAX_DIM), ("expert_intermediate_size", 0, MAX_DIM)):
            checks.integer(getattr(self, name), name, lo, hi, SpecError)
        checks.integer(self.n_kv_heads, "n_kv_heads", 1, self.n_heads, SpecError)
        _require(self.n_heads % self.n_kv_heads == 0,
                 f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        _require(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        _require(len(self.layer_kinds) == self.n_layers,
                 f"layer_kinds has {len(self.layer_kinds)} entries for {self.n_layers} layers")
        for kind in self.layer_kinds:
            checks.choice(kind, "layer_kinds[i]", LAYER_KINDS, SpecError)
        checks.number(self.norm_eps, "norm_eps", 1e-12, 0.1, SpecError)
        checks.number(self.rope_theta, "rope_theta", 1.0, 1e10, SpecError)
        checks.boolean(self.tie_embeddings, "tie_embeddings", SpecError)
        for name in ("embedding_multiplier", "residual_multiplier", "logits_divisor"):
            checks.number(getattr(self, name), name, *MULTIPLIER_RANGE, SpecError)
        if self.attention_scale is not None:
            checks.number(self.attention_scale, "attention_scale", *MULTIPLIER_RANGE, SpecError)
        checks.choice(self.qk_norm, "qk_norm", QK_NORMS, SpecError)
        checks.boolean(self.attention_bias, "attention_bias", SpecError)
        checks.choice(self.activation, "activation", ("silu",), SpecError)
        checks.choice(self.norm, "norm", ("rmsnorm",), SpecError)
        if "dense" in self.layer_kinds:
            _require(self.intermediate_size > 0, "dense layers need intermediate_size > 0")
        if self.is_moe:
            _require(isinstance(self.routing, RoutingSpec), "MoE layers need a routing spec")
            _require(self.expert_intermediate_size > 0, "MoE layers need expert_intermediate_size > 0")
            self.routing.validate()
        else:
            _require(self.routing is None, "a model without MoE layers has no routing spec")
        return self
