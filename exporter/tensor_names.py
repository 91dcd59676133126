"""The one table of canonical tensor names (the state-dict names of `model.Transformer`).

Every source (our checkpoints, Hugging Face adapters) maps its tensors onto these names.
Expert tensors are stacked per layer: gate/up [E, I, D], down [E, D, I].
"""

from __future__ import annotations

from ..runtime.spec import ModelSpec

EXPERT_PARTS = ("gate", "up", "down")


def expert_names(layer: int) -> dict[str, str]:
    """Stacked expert tensors of an MoE layer, by part."""
    return {part: f"layers.{layer}.ffn.experts.{part}" for part in EXPERT_PARTS}


def swiglu_names(prefix: str) -> list[str]:
    return [f"{prefix}.{part}.weight" for part in EXPERT_PARTS]


def layer_dense_names(spec: ModelSpec, layer: int) -> list[str]:
    """Every non-expert tensor of one layer."""
    p = f"layers.{layer}"
    names = [f"{p}.attn_norm.weight", *(f"{p}.attn.{w}.weight" for w in ("wq", "wk", "wv", "wo")),
             f"{p}.ffn_norm.weight"]
    if spec.attention_bias:
        names += [f"{p}.attn.{w}.bias" for w in ("wq", "wk", "wv")]
    if spec.qk_norm != "none":
        names += [f"{p}.attn.q_norm.weight", f"{p}.attn.k_norm.weight"]
    if spec.layer_kinds[layer] == "dense":
        return names + swiglu_names(f"{p}.ffn")
    names.append(f"{p}.ffn.router.weight")
    if spec.routing.shared_expert_size:
        names += swiglu_names(f"{p}.ffn.shared")
    if spec.routing.shared_expert_gate:
        names.append(f"{p}.ffn.shared_gate.weight")
    return names


def dense_names(spec: ModelSpec) -> list[str]:
    """Every non-expert tensor of the model, in file order."""
    names = ["embed.weight"]
    for layer in range(spec.n_layers):
        names += layer_dense_names(spec, layer)
    names.append("norm.weight")
    if not spec.tie_embeddings:
        names.append("lm_head.weight")
    return names


def is_dense_linear(name: str) -> bool:
    """An attention projection or a dense/shared FFN matrix: what `--dense-int8` quantizes.

    The router and the shared expert's gate stay float32 (they decide, they are small).
    """
    parts = name.split(".")
    return parts[0] == "layers" and parts[-1] == "weight" and (
        parts[2] == "attn" and parts[3] in ("wq", "wk", "wv", "wo")
        or parts[2] == "ffn" and parts[-2] in EXPERT_PARTS)
