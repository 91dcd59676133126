"""The LM head on the CPU: final RMSNorm and an int8, int4 (or float32) GEMV over the vocabulary."""

from __future__ import annotations

import numpy as np

from . import kernels
from .bundle import DTYPES, Manifest
from .kernel_q8 import BLOCK


class Head:
    """Logits from the residual stream, reading the head's weights from the mapped dense file."""

    def __init__(self, manifest: Manifest, dense: np.ndarray, activations: str = "int8"):
        """`activations` "int8": an int8 head whose groups hold whole blocks of 32, or an int4 one, takes the
        normalized hidden state quantized to int8 blocks of 32 (`kernels.INT8_ACTIVATIONS`); "float" keeps it
        float32."""
        spec = manifest.spec
        self.eps = np.float32(spec.norm_eps)
        self.divisor = np.float32(spec.logits_divisor)
        self.norm, self.weight, self.scale = (tensor_view(dense, manifest, manifest.head[key])
                                              for key in ("norm", "weight", "scale"))
        group = spec.hidden_size // self.scale.shape[1]
        blocks = self.weight.dtype == np.uint8 or (self.weight.dtype == np.int8 and group % BLOCK == 0)  # int4, int8
        self.quantized = kernels.INT8_ACTIVATIONS if activations == "int8" and blocks else None

    def run(self, hidden: np.ndarray) -> np.ndarray:
        """logits [T, V] for hidden [T, D]."""
        out = np.empty((hidden.shape[0], self.weight.shape[0]), dtype=np.float32)
        kernels.norm_linear(np.ascontiguousarray(hidden, dtype=np.float32), self.norm, self.eps, self.weight,
                            self.scale, out, self.quantized)
        if self.divisor != 1.0:
            out /= self.divisor
        return out


def tensor_view(dense: np.ndarray, manifest: Manifest, name: str) -> np.ndarray:
    """A read-only array over the bytes of dense tensor `name` (no copy; `dense` is the mapped file)."""
    entry = manifest.dense_tensors[name]
    return dense[entry.offset:entry.offset + entry.nbytes].view(DTYPES[entry.dtype]).reshape(entry.shape)
