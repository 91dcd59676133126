"""The codes of onnxruntime's `com.microsoft.MatMulNBits` (bits 8 or 4, no zero-point input), as the dense
linears store them: uint8 [out, in / block, block · bits / 8] with float32 scales [out, in / block].

bits 8: one byte per input, q + 128. bits 4: two inputs per byte, low-first along the input axis — byte i of
a block holds input 2i in its low nibble and 2i + 1 in its high one, each q + 8 (onnxruntime's default zero
point 2^(bits − 1)). The 4-bit bytes are the int4 scheme's (`int4.pack_int4`: byte j of a block of 32 holds
input j and j + 16) of the inputs taken in `nbits_order`, so the int4 row readers compute a 4-bit row's dot
with x from x in that order.
"""

from __future__ import annotations

import numpy as np

from .int4 import BLOCK, pack_int4, quantize_int4, unpack_int4
from .int8 import QuantizedTensor, dequantize, from_unsigned, quantize_int8, to_unsigned

BITS = (4, 8)


def nbits_order(x: np.ndarray) -> np.ndarray:
    """x [..., n] (n a multiple of 32) with each block of 32 reordered: its even inputs, then its odd ones."""
    blocks = np.asarray(x).reshape(*np.shape(x)[:-1], -1, BLOCK // 2, 2)
    return np.swapaxes(blocks, -1, -2).reshape(np.shape(x))


def _from_nbits_order(x: np.ndarray) -> np.ndarray:
    blocks = np.asarray(x).reshape(*np.shape(x)[:-1], -1, 2, BLOCK // 2)
    return np.swapaxes(blocks, -1, -2).reshape(np.shape(x))


def nbits_codes(w: np.ndarray, block: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """w [out, in] quantized per block of `block` inputs (int8: symmetric, int4: ggml Q4_0's grid) as
    MatMulNBits stores it: (codes uint8 [out, in / block, block · bits / 8], scales float32 [out, in / block])."""
    w = np.asarray(w, dtype=np.float32)
    if bits == 8:
        q = quantize_int8(w, block)
        return to_unsigned(q.q).reshape(w.shape[0], -1, block), q.scale
    q = quantize_int4(w, block)
    return pack_int4(nbits_order(q.q)).reshape(w.shape[0], -1, block // 2), q.scale


def nbits_dequantize(codes: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """The float32 matrix [out, in] that MatMulNBits codes [out, blocks, blob] and scales [out, blocks] stand for."""
    rows = codes.shape[0]
    if bits == 8:
        return (from_unsigned(codes) * scale[:, :, None]).reshape(rows, -1)
    q = _from_nbits_order(unpack_int4(np.ascontiguousarray(codes).reshape(rows, -1)))
    return dequantize(QuantizedTensor(q=q, scale=scale, group_size=q.shape[1] // scale.shape[1]))
