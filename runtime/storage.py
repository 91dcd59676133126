"""How a bundle stores each part of the model (its scheme, weights and bytes, hence bits per weight: `moedge
inspect`), and the bytes one decode step reads (the roofline of `moedge bench`, the thread default)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .bundle import EMBEDDING, NBITS, Manifest
from .tensor_names import dense_linear_names


class Part(NamedTuple):
    """One part of the model as stored: `weights` counts parameters, `nbytes` their codes and scales."""

    name: str
    stored: str
    weights: int
    nbytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.weights if self.weights else 0.0


def _elements(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def storage(manifest: Manifest) -> list[Part]:
    """Experts (spans, padding included), dense linears, LM head, and everything else in the dense file."""
    spec, tensors = manifest.spec, manifest.dense_tensors
    parts = []
    if manifest.experts is not None:
        x = manifest.experts
        count = sum(len(offsets) for offsets in x.layers.values())
        per_expert = 3 * spec.hidden_size * spec.expert_intermediate_size
        group = f"group {x.group_size}" if x.group_size else "per channel"
        spans = sum(x.span_bytes(layer, e) for layer, offsets in x.layers.items() for e in range(len(offsets)))
        parts.append(Part("experts", f"{manifest.quant_scheme} {group}", count * per_expert, spans))
    linears = [n for n in dense_linear_names(spec) if n in tensors]
    scales = [f"{n}_scale" for n in linears if f"{n}_scale" in tensors]
    per_code = 8 // NBITS.get(manifest.dense_linears, 8)  # weights per stored element: 2 for 4-bit codes
    weights = sum(_elements(tensors[n].shape) for n in linears) * per_code
    dense_stored = manifest.dense_linears
    if per_code == 2:  # 4 bits need groups: say which (int8 codes take the largest block dividing each input)
        dense_stored += f" group {manifest.group_size}"
    parts.append(Part("dense linears", dense_stored, weights, sum(tensors[n].nbytes for n in linears + scales)))
    head = [manifest.head["weight"], manifest.head["scale"]]
    head_groups = tensors[head[1]].shape[1]
    head_stored = manifest.head_stored
    head_stored += f" group {spec.hidden_size // head_groups}" if head_groups > 1 else ""
    parts.append(Part("LM head", head_stored, spec.vocab_size * spec.hidden_size,
                      sum(tensors[n].nbytes for n in head)))
    rest = [n for n in tensors if n not in {*linears, *scales, *head}]
    parts.append(Part("embedding, norms, router", "float32", sum(_elements(tensors[n].shape) for n in rest),
                      sum(tensors[n].nbytes for n in rest)))
    return parts


def step_bytes(manifest: Manifest) -> dict[str, int]:
    """Bytes of weights one decode step reads: dense graphs, the head, k experts per MoE layer.

    The embedding counts one row (the lookup) unless the head reads the whole of it.
    Experts count top-k per MoE layer at the layer's mean expert size (a mixed bundle's experts differ).
    """
    spec = manifest.spec
    used = {name for name in manifest.dense_tensors if name != EMBEDDING} | set(manifest.head.values())
    dense = sum(manifest.dense_tensors[name].nbytes for name in used)
    if EMBEDDING not in used:
        dense += manifest.dense_tensors[EMBEDDING].nbytes // spec.vocab_size
    experts = 0
    if manifest.experts is not None:
        x = manifest.experts
        size = {s: sum(t.nbytes for t in layout.tensors.values()) for s, layout in x.layouts.items()}
        experts = round(sum(spec.routing.top_k * np.mean([size[s] for s in x.schemes[layer]]) for layer in x.layers))
    return {"dense": dense, "experts": experts, "total": dense + experts}
