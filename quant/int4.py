"""Symmetric 4-bit weight quantization per group along the input axis, packed two codes per byte.

Per group of `group_size` inputs (32, 64 or 128): d = m / −8, where m is the group's value of largest
magnitude (sign kept), and q = clip(round(w / d), −8, 7), so m itself is exactly −8·d — the grid of
ggml's Q4_0 (with a float32 scale). Codes are stored as unsigned nibbles q + 8, packed per block of
32 inputs: byte j (0..15) of a block holds input j in its low nibble and input j + 16 in its high one.
"""

from __future__ import annotations

import numpy as np

from .int8 import QuantizedTensor, resolve_group_size

BLOCK = 32  # inputs per packing block: 16 bytes
NIBBLE_ZERO = 8


def int4_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """`w[..., out, in]` as float64 groups [..., out, in / group, group] for a 4-bit grid; ValueError naming what
    does not fit (not a matrix, NaN or infinite values, a group not a multiple of 32 or not dividing `in`)."""
    w = np.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"expected a weight of shape [..., out, in], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight contains NaN or infinite values; cannot quantize")
    if not group_size or group_size % BLOCK:
        raise ValueError(f"4-bit needs a group size that is a multiple of {BLOCK}, got {group_size}")
    group = resolve_group_size(w.shape[-1], group_size)
    return w.astype(np.float64).reshape(*w.shape[:-1], w.shape[-1] // group, group)


def quantize_int4(w: np.ndarray, group_size: int) -> QuantizedTensor:
    """Quantize `w[..., out, in]` to 4-bit codes (`q` int8 in [-8, 7], unpacked) with one float32
    scale per (row, group); the group must be a multiple of 32 dividing the input dimension."""
    grouped = int4_groups(w, group_size)
    extreme = np.take_along_axis(grouped, np.abs(grouped).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    scale = (extreme / -NIBBLE_ZERO).astype(np.float32)
    safe = np.where(scale != 0, scale, 1.0).astype(np.float64)[..., None]
    q = np.clip(np.rint(grouped / safe), -NIBBLE_ZERO, NIBBLE_ZERO - 1)
    q = np.where(scale[..., None] != 0, q, 0).astype(np.int8).reshape(*grouped.shape[:-2], -1)
    return QuantizedTensor(q=q, scale=scale, group_size=grouped.shape[-1])


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 codes [..., in] in [-8, 7] → uint8 [..., in / 2], block by block (see the module doc)."""
    blocks = (q.astype(np.int16) + NIBBLE_ZERO).astype(np.uint8).reshape(*q.shape[:-1], -1, 2, BLOCK // 2)
    return (blocks[..., 0, :] | (blocks[..., 1, :] << 4)).reshape(*q.shape[:-1], q.shape[-1] // 2)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of `pack_int4`: uint8 [..., in / 2] → int8 codes [..., in]."""
    bytes_ = packed.reshape(*packed.shape[:-1], -1, 1, BLOCK // 2)
    nibbles = np.concatenate([bytes_ & 15, bytes_ >> 4], axis=-2).astype(np.int8) - NIBBLE_ZERO
    return nibbles.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
