"""The one table of canonical tensor names (the state-dict names of the exporter's `model.Transformer`).

Part of the bundle contract: every source (our checkpoints, Hugging Face adapters) maps its tensors
onto these names, the graph builder and the runtime's decode path read the dense file by them;
nothing else spells them. Expert tensors are stacked
per layer: gate/up [E, I, D], down [E, D, I]. `layer_names("{i}")` gives templates for every layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .bundle import EMBEDDING, HEAD_NORM
from .spec import ModelSpec

EXPERT_PARTS = ("gate", "up", "down")  # of every SwiGLU: dense FFN, shared expert, routed experts
PROJECTIONS = ("wq", "wk", "wv", "wo")  # attention; q/k/v may have biases
LM_HEAD = "lm_head.weight"


def swiglu_names(prefix: str) -> list[str]:
    """The gate, up and down matrices of the SwiGLU at `prefix`."""
    return [f"{prefix}.{part}.weight" for part in EXPERT_PARTS]


@dataclass(frozen=True)
class LayerNames:
    """The canonical names of one layer's tensors (build with `layer_names`)."""

    prefix: str  # "layers.{i}"
    attn_norm: str
    q_norm: str
    k_norm: str
    ffn_norm: str
    ffn: str  # prefix of a dense layer's SwiGLU
    router: str
    shared: str  # prefix of the shared expert's SwiGLU
    shared_gate: str
    experts: dict[str, str]  # stacked routed experts, by part

    def projection(self, which: str) -> str:
        """An attention matrix: `which` in PROJECTIONS."""
        return f"{self.prefix}.attn.{which}.weight"

    def bias(self, which: str) -> str:
        return f"{self.prefix}.attn.{which}.bias"


def layer_names(layer: int | str) -> LayerNames:
    p = f"layers.{layer}"
    return LayerNames(prefix=p, attn_norm=f"{p}.attn_norm.weight", q_norm=f"{p}.attn.q_norm.weight",
                      k_norm=f"{p}.attn.k_norm.weight", ffn_norm=f"{p}.ffn_norm.weight", ffn=f"{p}.ffn",
                      router=f"{p}.ffn.router.weight", shared=f"{p}.ffn.shared",
                      shared_gate=f"{p}.ffn.shared_gate.weight",
                      experts={part: f"{p}.ffn.experts.{part}" for part in EXPERT_PARTS})


_IN_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def template(name: str) -> tuple[str, int | None]:
    """A canonical name as (the template `layer_names("{i}")` spells, its layer index); (name, None) outside layers."""
    match = _IN_LAYER.fullmatch(name)
    return (f"{layer_names('{i}').prefix}.{match[2]}", int(match[1])) if match else (name, None)


def expert_part(name: str) -> tuple[int, str] | None:
    """(layer, part) if `name` is a stacked expert tensor, else None."""
    key, layer = template(name)
    parts = layer_names("{i}").experts
    return next(((layer, part) for part, full in parts.items() if full == key), None) if layer is not None else None


def expert_names(layer: int) -> dict[str, str]:
    """Stacked expert tensors of an MoE layer, by part."""
    return layer_names(layer).experts


def layer_dense_names(spec: ModelSpec, layer: int) -> list[str]:
    """Every non-expert tensor of one layer."""
    n = layer_names(layer)
    names = [n.attn_norm, *(n.projection(w) for w in PROJECTIONS), n.ffn_norm]
    if spec.attention_bias:
        names += [n.bias(w) for w in PROJECTIONS[:3]]
    if spec.qk_norm != "none":
        names += [n.q_norm, n.k_norm]
    if spec.layer_kinds[layer] == "dense":
        return names + swiglu_names(n.ffn)
    names.append(n.router)
    if spec.routing.shared_expert_size:
        names += swiglu_names(n.shared)
    if spec.routing.shared_expert_gate:
        names.append(n.shared_gate)
    return names


def dense_names(spec: ModelSpec) -> list[str]:
    """Every non-expert tensor of the model, in file order."""
    names = [EMBEDDING]
    for layer in range(spec.n_layers):
        names += layer_dense_names(spec, layer)
    names.append(HEAD_NORM)
    if not spec.tie_embeddings:
        names.append(LM_HEAD)
    return names


def dense_linear_names(spec: ModelSpec) -> set[str]:
    """The attention projections and dense/shared FFN matrices: what int8 bundles store int8 (unless `--float-dense`).

    The router and the shared expert's gate stay float32 (they decide, they are small).
    """
    names = set()
    for layer in range(spec.n_layers):
        n = layer_names(layer)
        names.update(n.projection(w) for w in PROJECTIONS)
        names.update(swiglu_names(n.ffn if spec.layer_kinds[layer] == "dense" else n.shared))
    return names
