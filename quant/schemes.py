"""The registry of weight schemes: how a matrix is quantized, how its codes are stored, and back.

The exporter writes a scheme's `stored` codes and scales; the runtime's kernels read the layout the
scheme names; nothing else re-implements a layout. Every scheme keeps one float32 scale per
(row, group); `group_size` 0 means one group per row (per output channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .int4 import BLOCK, pack_int4, quantize_int4, unpack_int4
from .int8 import QuantizedTensor, dequantize, quantize_int8, resolve_group_size


@dataclass(frozen=True)
class Scheme:
    """A weight scheme: `bits` per weight, the dtype of its stored codes, and `codes_per_byte`."""

    name: str
    bits: int
    code_dtype: str
    codes_per_byte: int = 1
    needs_group: bool = False  # False: per output channel is allowed

    def check_group(self, in_features: int, group_size: int) -> int:
        """The effective group of a row of `in_features` (ValueError naming what does not fit)."""
        if self.needs_group and not group_size:
            raise ValueError(f"{self.name} needs a group size (32, 64 or 128)")
        if self.codes_per_byte > 1 and in_features % BLOCK:
            raise ValueError(f"{self.name} needs input dimensions divisible by {BLOCK}, got {in_features}")
        return resolve_group_size(in_features, group_size) if self.bits < 32 else in_features

    def quantize(self, w: np.ndarray, group_size: int) -> QuantizedTensor:
        """`w[..., out, in]` as this scheme's values (unpacked codes) and scales."""
        w = np.asarray(w, dtype=np.float32)
        if self.name == "float32":
            return QuantizedTensor(q=w, scale=np.ones((*w.shape[:-1], 1), np.float32), group_size=w.shape[-1])
        if self.name == "int4":
            return quantize_int4(w, group_size)
        return quantize_int8(w, group_size)

    def stored_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """The shape of a [rows, cols] matrix's stored codes."""
        return rows, cols // self.codes_per_byte

    def pack(self, q: np.ndarray) -> np.ndarray:
        """Codes as stored: int4 two per byte, the others as they are."""
        return pack_int4(q) if self.codes_per_byte == 2 else np.ascontiguousarray(q, dtype=self.code_dtype)

    def unpack(self, stored: np.ndarray) -> np.ndarray:
        """The inverse of `pack`."""
        return unpack_int4(stored) if self.codes_per_byte == 2 else np.asarray(stored)


SCHEMES = {s.name: s for s in (Scheme("float32", 32, "float32"), Scheme("int8", 8, "int8"),
                                Scheme("int4", 4, "uint8", codes_per_byte=2, needs_group=True))}


def dequantize_stored(scheme: str, stored: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 matrix that `stored` codes and `scale` [rows, groups] stand for."""
    q = SCHEMES[scheme].unpack(stored)
    return dequantize(QuantizedTensor(q=q, scale=scale, group_size=q.shape[-1] // scale.shape[-1]))
