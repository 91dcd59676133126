"""The base of every family adapter: config → `ModelSpec`, canonical tensor name → source tensors.

A family sets `names` (canonical name template → source name template, or a tuple of
alternatives, the first present in the checkpoint wins), `experts` (expert layouts, tried in
order per layer) and implements `spec`. Templates use {i} for the layer index.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ...runtime.bundle import EMBEDDING, HEAD_NORM
from ...runtime.spec import ModelSpec, SpecError
from ...runtime.tensor_names import EXPERT_PARTS, LM_HEAD, expert_part, layer_names, swiglu_names, template
from ..source import ExportError
from .config import HFConfig
from .experts import ExpertLayout
from .tensors import SafetensorsFolder

_ATTENTION = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}

Names = dict[str, str | tuple[str, ...]]


def decoder_names() -> Names:
    """The Llama-style layout every family here starts from (canonical name template → source template)."""
    layer, n = "model.layers.{i}", layer_names("{i}")
    names: Names = {
        EMBEDDING: "model.embed_tokens.weight",
        HEAD_NORM: "model.norm.weight",
        LM_HEAD: "lm_head.weight",
        n.attn_norm: f"{layer}.input_layernorm.weight",
        n.ffn_norm: f"{layer}.post_attention_layernorm.weight",
        n.q_norm: f"{layer}.self_attn.q_norm.weight",
        n.k_norm: f"{layer}.self_attn.k_norm.weight",
        n.router: f"{layer}.mlp.gate.weight",
        n.shared_gate: f"{layer}.mlp.shared_expert_gate.weight",
    }
    for ours, theirs in _ATTENTION.items():
        names[n.projection(ours)] = f"{layer}.self_attn.{theirs}.weight"
        names[n.bias(ours)] = f"{layer}.self_attn.{theirs}.bias"
    for part, ours, shared in zip(EXPERT_PARTS, swiglu_names(n.ffn), swiglu_names(n.shared), strict=True):
        names[ours] = f"{layer}.mlp.{part}_proj.weight"
        names[shared] = f"{layer}.mlp.shared_expert.{part}_proj.weight"
    return names


def moe_layer_kinds(n_layers: int, sparse_step: int = 1, mlp_only_layers: tuple[int, ...] = ()) -> tuple[str, ...]:
    """Qwen-style placement: layer i is MoE when (i + 1) % sparse_step == 0 and i is not MLP-only."""
    if sparse_step < 1:
        raise ExportError(f"decoder_sparse_step must be >= 1, got {sparse_step}")
    return tuple("moe" if (i + 1) % sparse_step == 0 and i not in mlp_only_layers else "dense"
                 for i in range(n_layers))


class Adapter(ABC):
    """One Hugging Face family; subclasses are registered with `registry.register`."""

    names: ClassVar[Names] = decoder_names()
    experts: ClassVar[tuple[ExpertLayout, ...]] = ()
    ignored: ClassVar[tuple[str, ...]] = (r"\.rotary_emb\.inv_freq$",)  # source tensors that carry nothing
    rope_theta: ClassVar[float] = 10000.0  # the family's default when the config has none
    head_dim: ClassVar[int | None] = None  # the family's default; None: hidden_size // heads

    def __init__(self, config: HFConfig):
        self.config = config

    @abstractmethod
    def spec(self) -> ModelSpec:
        """The canonical description of the checkpoint; `ExportError` for anything unsupported."""

    def checked_spec(self) -> ModelSpec:
        """`spec()`, validated; any inconsistency as one `ExportError` naming the config."""
        try:
            return self.spec().validate()
        except (SpecError, TypeError, ValueError) as exc:
            raise ExportError(f"{self.config.name}: unsupported {self.config.architecture} config: {exc}") from None

    def base_fields(self) -> dict[str, Any]:
        """The ModelSpec fields every family reads the same way (all layers dense)."""
        c = self.config
        c.expect("hidden_act", "silu", default="silu")
        c.expect("quantization_config", None)  # pre-quantized weights (GPTQ, AWQ, fp8, ...)
        hidden, heads = c.require("hidden_size"), c.require("num_attention_heads")
        layers = c.require("num_hidden_layers")
        return dict(vocab_size=c.require("vocab_size"), hidden_size=hidden, n_layers=layers, n_heads=heads,
                    n_kv_heads=c.get("num_key_value_heads", heads),
                    head_dim=c.get("head_dim", self.head_dim or hidden // heads),
                    intermediate_size=c.get("intermediate_size", 0), layer_kinds=("dense",) * layers,
                    max_seq_len=c.context_length(), norm_eps=float(c.require("rms_norm_eps")),
                    rope_theta=c.rope_theta(self.rope_theta), tie_embeddings=bool(c.get("tie_word_embeddings", False)))

    def sources(self, spec: ModelSpec, tensors: SafetensorsFolder, name: str) -> list[str]:
        """The source tensors that make the canonical tensor `name`."""
        experts = expert_part(name)
        if experts:
            layer = experts[0]
            return self._layout(tensors, layer, spec.routing.n_experts).names(layer, spec.routing.n_experts)
        return [self._source_name(tensors, name)]

    def read(self, spec: ModelSpec, tensors: SafetensorsFolder, name: str) -> np.ndarray:
        """The canonical tensor `name` as float32, experts stacked [E, out, in]."""
        experts = expert_part(name)
        if experts:
            layer, part = experts
            return self._layout(tensors, layer, spec.routing.n_experts).read(tensors, layer, part,
                                                                              spec.routing.n_experts)
        return tensors.get(self._source_name(tensors, name))

    def is_ignored(self, spec: ModelSpec, source_name: str) -> bool:
        """Whether a source tensor that no canonical tensor uses is harmless (else export refuses)."""
        if spec.tie_embeddings and source_name == self.names[LM_HEAD]:
            return True  # tied: the embedding is the head, as in the source model
        return any(re.search(pattern, source_name) for pattern in self.ignored)

    def _source_name(self, tensors: SafetensorsFolder, name: str) -> str:
        key, index = template(name)
        if key not in self.names:
            raise ExportError(f"{type(self).__name__}: no source tensor for {name!r}")
        options = self.names[key]
        options = [o.format(i=index) for o in ((options,) if isinstance(options, str) else options)]
        return next((o for o in options if o in tensors), options[0])

    def _layout(self, tensors: SafetensorsFolder, layer: int, n_experts: int) -> ExpertLayout:
        for layout in self.experts:
            if all(name in tensors for name in layout.names(layer, n_experts)):
                return layout
        tried = [layout.names(layer, n_experts)[0] for layout in self.experts]
        raise ExportError(f"{tensors.folder}: no experts of layer {layer} found (looked for {', '.join(tried)}, "
                          f"all {n_experts} experts)")
