"""Expert layouts found in checkpoints, each read into the canonical stack [E, out, in] per part.

`PerExpert`: one tensor per expert and projection (`experts.{e}.w1.weight`, `experts.{e}.gate_proj.weight`).
`FusedGateUp`: one stacked tensor for gate and up, [E, 2I, D] with the gate rows first, and one
for down, [E, D, I] (transformers 5's own layout; GraniteMoE's `input_linear`/`output_linear`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..source import ExportError
from .tensors import SafetensorsFolder


@dataclass(frozen=True)
class PerExpert:
    """`template` has the fields {i} (layer), {e} (expert) and {w} (the source name of a part)."""

    template: str
    parts: dict[str, str]  # canonical part (gate/up/down) → source name

    def names(self, layer: int, n_experts: int) -> list[str]:
        return [self._name(layer, e, w) for w in self.parts.values() for e in range(n_experts)]

    def read(self, tensors: SafetensorsFolder, layer: int, part: str, n_experts: int) -> np.ndarray:
        first = tensors.get(self._name(layer, 0, self.parts[part]))
        stack = np.empty((n_experts, *first.shape), np.float32)  # [E, out, in]
        stack[0] = first
        for e in range(1, n_experts):
            name = self._name(layer, e, self.parts[part])
            weight = tensors.get(name)
            if weight.shape != first.shape:
                raise ExportError(f"{name} has shape {list(weight.shape)}, expert 0 has {list(first.shape)}")
            stack[e] = weight
        return stack

    def _name(self, layer: int, e: int, w: str) -> str:
        return self.template.format(i=layer, e=e, w=w)


@dataclass(frozen=True)
class FusedGateUp:
    """`gate_up` and `down` have the field {i} (layer)."""

    gate_up: str
    down: str

    def names(self, layer: int, n_experts: int) -> list[str]:
        return [self.gate_up.format(i=layer), self.down.format(i=layer)]

    def read(self, tensors: SafetensorsFolder, layer: int, part: str, n_experts: int) -> np.ndarray:
        if part == "down":
            return tensors.get(self.down.format(i=layer))
        fused = tensors.get(self.gate_up.format(i=layer))  # [E, 2I, D]
        half = fused.shape[1] // 2
        return np.ascontiguousarray(fused[:, :half] if part == "gate" else fused[:, half:])


ExpertLayout = PerExpert | FusedGateUp
