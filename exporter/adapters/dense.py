"""Dense families: Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm)."""

from __future__ import annotations

from ...runtime.spec import ModelSpec
from .adapter import Adapter
from .registry import register


@register("LlamaForCausalLM")
class Llama(Adapter):
    def spec(self) -> ModelSpec:
        self.config.expect("attention_bias", False)  # Llama's bias covers o_proj too
        self.config.expect("mlp_bias", False)
        return ModelSpec(**self.base_fields())


@register("MistralForCausalLM")
class Mistral(Adapter):
    def spec(self) -> ModelSpec:
        return ModelSpec(**self.base_fields())


@register("Qwen2ForCausalLM")
class Qwen2(Adapter):
    def spec(self) -> ModelSpec:
        return ModelSpec(**self.base_fields(), attention_bias=True)  # q/k/v always carry biases, o_proj none


@register("Qwen3ForCausalLM")
class Qwen3(Adapter):
    head_dim = 128

    def spec(self) -> ModelSpec:
        self.config.expect("attention_bias", False)
        return ModelSpec(**self.base_fields(), qk_norm="head")
