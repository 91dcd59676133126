"""A GGUF file's metadata as the Hugging Face config its family adapter reads.

GGUF keys (`{arch}.block_count`, `{arch}.attention.head_count_kv`, ...) are renamed to the
`config.json` keys of the matching transformers architecture, so the adapter registry builds the
`ModelSpec` and applies the same checks as for a Hugging Face folder. What GGUF leaves implicit comes
from llama.cpp's graph for the architecture (routing normalisation, SiLU) and from the tensors present
(tied head, vocabulary size). Metadata a bundle cannot honour is refused.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .adapters.config import HFConfig
from .source import ExportError

COMMON_KEYS = {  # GGUF key (after "{arch}.") -> config.json key
    "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim", "rope.freq_base": "rope_theta",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok", "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
    "attention.sliding_window": "sliding_window",
    "expert_weights_norm": "norm_topk_prob",
}
REQUIRED = ("block_count", "embedding_length", "context_length", "attention.head_count",
            "attention.layer_norm_rms_epsilon")
GRANITE_KEYS = {"attention.scale": "attention_multiplier", "embedding_scale": "embedding_multiplier",
                "residual_scale": "residual_multiplier", "logit_scale": "logits_scaling"}
SOFTMAX_GATING = 1  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX


@dataclass(frozen=True)
class GGUFFamily:
    """How one GGUF architecture maps onto a Hugging Face one (`moe_architecture` when it has experts)."""

    architecture: str
    moe_architecture: str | None = None
    expert_size_key: str = "intermediate_size"  # the config key of the experts' width
    keys: dict[str, str] = field(default_factory=dict)  # family keys beside COMMON_KEYS
    defaults: dict[str, Any] = field(default_factory=dict)  # what llama.cpp's graph implies


FAMILIES = {
    "llama": GGUFFamily("LlamaForCausalLM", moe_architecture="MixtralForCausalLM"),
    "qwen2": GGUFFamily("Qwen2ForCausalLM"),
    "qwen3": GGUFFamily("Qwen3ForCausalLM"),
    "qwen2moe": GGUFFamily("Qwen2MoeForCausalLM", "Qwen2MoeForCausalLM", "moe_intermediate_size",
                           defaults={"norm_topk_prob": False}),
    "qwen3moe": GGUFFamily("Qwen3MoeForCausalLM", "Qwen3MoeForCausalLM", "moe_intermediate_size",
                           defaults={"norm_topk_prob": True}),
    "olmoe": GGUFFamily("OlmoeForCausalLM", "OlmoeForCausalLM", defaults={"norm_topk_prob": False}),
    "granitemoe": GGUFFamily("GraniteMoeForCausalLM", "GraniteMoeForCausalLM", keys=GRANITE_KEYS),
}


def _refuse_unsupported(name: str, arch: str, meta: dict[str, Any]) -> None:
    def get(key):
        return meta.get(f"{arch}.{key}")

    scaling = get("rope.scaling.type")
    if scaling not in (None, "none") or get("rope.scaling.factor") not in (None, 1.0):
        raise ExportError(f"{name}: RoPE scaling ({arch}.rope.scaling.type={scaling!r}, factor "
                          f"{get('rope.scaling.factor')}) is not supported (only plain RoPE)")
    head_dim = get("attention.key_length") or get("embedding_length") // get("attention.head_count")
    if get("rope.dimension_count") not in (None, head_dim):
        raise ExportError(f"{name}: partial rotary embeddings ({arch}.rope.dimension_count="
                          f"{get('rope.dimension_count')} of a head of {head_dim}) are not supported")
    if get("attention.value_length") not in (None, head_dim):
        raise ExportError(f"{name}: {arch}.attention.value_length={get('attention.value_length')} differs from "
                          f"the key length {head_dim}: not supported")
    if get("expert_gating_func") not in (None, SOFTMAX_GATING):
        raise ExportError(f"{name}: {arch}.expert_gating_func={get('expert_gating_func')} is not supported "
                          "(only softmax routing)")
    if get("attention.clamp_kqv") is not None:
        raise ExportError(f"{name}: {arch}.attention.clamp_kqv={get('attention.clamp_kqv')} (q/k/v clipping) "
                          "is not supported")
    if get("expert_weights_scale") not in (None, 1.0):
        raise ExportError(f"{name}: {arch}.expert_weights_scale={get('expert_weights_scale')} is not supported")


def gguf_config(name: str, meta: dict[str, Any], tensors: Collection[str],
                embedding_rows: int) -> HFConfig:
    """The Hugging Face config of a GGUF file with metadata `meta` (key -> value) and tensor names `tensors`."""
    arch = meta.get("general.architecture")
    if arch not in FAMILIES:
        raise ExportError(f"{name}: GGUF architecture {arch!r} is not supported; supported: {', '.join(FAMILIES)}")
    missing = [f"{arch}.{key}" for key in REQUIRED if f"{arch}.{key}" not in meta]
    if missing:
        raise ExportError(f"{name}: metadata {missing[0]} is missing")
    _refuse_unsupported(name, arch, meta)
    family = FAMILIES[arch]
    keys = {**COMMON_KEYS, "expert_feed_forward_length": family.expert_size_key, **family.keys}
    data: dict[str, Any] = {**family.defaults, "vocab_size": embedding_rows,
                            "tie_word_embeddings": "output.weight" not in tensors}
    for key, hf_key in keys.items():
        if f"{arch}.{key}" in meta:
            data[hf_key] = meta[f"{arch}.{key}"]
    data["num_local_experts"] = data.get("num_experts")
    if not data.get("num_experts"):
        data["architectures"] = [family.architecture]
    elif family.moe_architecture:
        data["architectures"] = [family.moe_architecture]
    else:
        raise ExportError(f"{name}: {arch} with {arch}.expert_count={data['num_experts']} is not supported")
    return HFConfig(data, name)
