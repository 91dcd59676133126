"""MoE families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GraniteMoE.

Routing conventions, as in each family's transformers forward: softmax over all experts, top-k,
then renormalised (Mixtral, GraniteMoE: its softmax over the top-k logits is the same thing) or
renormalised only if `norm_topk_prob` (Qwen2/3-MoE, OLMoE). Qwen2-MoE adds a shared expert whose
output is multiplied by sigmoid(x · shared_expert_gate).
"""

from __future__ import annotations

from typing import Any

from ...runtime.spec import ModelSpec, RoutingSpec
from ...runtime.tensor_names import layer_names
from .adapter import Adapter, decoder_names, moe_layer_kinds
from .experts import FusedGateUp, PerExpert
from .registry import register

_LAYER = "model.layers.{i}"
ROUTER = layer_names("{i}").router
_GATE_UP_DOWN = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_FUSED = FusedGateUp(f"{_LAYER}.mlp.experts.gate_up_proj", f"{_LAYER}.mlp.experts.down_proj")
_PER_EXPERT = PerExpert(_LAYER + ".mlp.experts.{e}.{w}.weight", _GATE_UP_DOWN)


class _QwenStyleMoE(Adapter):
    """Experts under `mlp.experts`, router `mlp.gate`, `norm_topk_prob` from the config."""

    experts = (_PER_EXPERT, _FUSED)

    def moe_fields(self, expert_size_key: str = "moe_intermediate_size", **routing: Any) -> dict[str, Any]:
        c = self.config
        fields = self.base_fields()
        fields["layer_kinds"] = moe_layer_kinds(fields["n_layers"], int(c.get("decoder_sparse_step", 1)),
                                                tuple(c.get("mlp_only_layers", ())))
        fields["expert_intermediate_size"] = c.require(expert_size_key)
        fields["routing"] = RoutingSpec(n_experts=c.require("num_experts", "num_local_experts"),
                                        top_k=c.require("num_experts_per_tok"),
                                        normalize_top_k=bool(c.get("norm_topk_prob", False)), **routing)
        return fields


@register("MixtralForCausalLM")
class Mixtral(Adapter):
    names = {**decoder_names(), ROUTER: (f"{_LAYER}.block_sparse_moe.gate.weight",
                                                                  f"{_LAYER}.mlp.gate.weight")}
    experts = (PerExpert(_LAYER + ".block_sparse_moe.experts.{e}.{w}.weight", {"gate": "w1", "up": "w3", "down": "w2"}),
               _FUSED)
    rope_theta = 1e6

    def spec(self) -> ModelSpec:
        c = self.config
        fields = self.base_fields()
        routing = RoutingSpec(n_experts=c.require("num_local_experts", "num_experts"),
                              top_k=c.require("num_experts_per_tok"), normalize_top_k=True)
        return ModelSpec(**{**fields, "layer_kinds": ("moe",) * fields["n_layers"], "intermediate_size": 0,
                            "expert_intermediate_size": c.require("intermediate_size"), "routing": routing})


@register("Qwen2MoeForCausalLM")
class Qwen2Moe(_QwenStyleMoE):
    def spec(self) -> ModelSpec:
        shared = int(self.config.get("shared_expert_intermediate_size", 0))
        fields = self.moe_fields(shared_expert_size=shared, shared_expert_gate=shared > 0)
        return ModelSpec(**fields, attention_bias=bool(self.config.get("qkv_bias", True)))


@register("Qwen3MoeForCausalLM")
class Qwen3Moe(_QwenStyleMoE):
    def spec(self) -> ModelSpec:
        self.config.expect("attention_bias", False)
        return ModelSpec(**self.moe_fields(), qk_norm="head")


@register("OlmoeForCausalLM")
class Olmoe(_QwenStyleMoE):
    def spec(self) -> ModelSpec:
        self.config.expect("attention_bias", False)
        self.config.expect("clip_qkv", None)
        return ModelSpec(**self.moe_fields("intermediate_size"), qk_norm="full")  # experts use intermediate_size


@register("GraniteMoeForCausalLM")
class GraniteMoe(Adapter):
    names = {**decoder_names(), ROUTER: (f"{_LAYER}.block_sparse_moe.router.layer.weight",
                                                                  f"{_LAYER}.block_sparse_moe.router.weight")}
    experts = (FusedGateUp(f"{_LAYER}.block_sparse_moe.input_linear.weight",
                           f"{_LAYER}.block_sparse_moe.output_linear.weight"),
               FusedGateUp(f"{_LAYER}.block_sparse_moe.experts.gate_up_proj",
                           f"{_LAYER}.block_sparse_moe.experts.down_proj"))

    def spec(self) -> ModelSpec:
        c = self.config
        c.expect("attention_bias", False)
        fields = self.base_fields()
        routing = RoutingSpec(n_experts=c.require("num_local_experts"), top_k=c.require("num_experts_per_tok"),
                              normalize_top_k=True)
        return ModelSpec(**{**fields, "layer_kinds": ("moe",) * fields["n_layers"], "intermediate_size": 0},
                         expert_intermediate_size=c.require("intermediate_size"), routing=routing,
                         embedding_multiplier=float(c.get("embedding_multiplier", 1.0)),
                         residual_multiplier=float(c.get("residual_multiplier", 1.0)),
                         attention_scale=float(c.get("attention_multiplier", 1.0)),
                         logits_divisor=float(c.get("logits_scaling", 1.0)))
