"""Asymmetric 4-bit weights: a scale and a minimum per group (the grid of ggml's Q4_1), the alternative to the
symmetric grid bundles store (`int4`).

Per group of `group_size` inputs: d = (max − min) / 15 and q = clip(round((w − min) / d), 0, 15), so w ≈ q·d + min
and both ends of the group are on the grid. It spends a second number per group on the offset, where the
symmetric grid puts one end (the largest magnitude) on the grid and wastes a level when the group is not
balanced. `samples/int4_grids.py` measures both grids on the trained samples, which is how the symmetric one was
picked; no bundle stores this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .int4 import int4_groups

LEVELS = 15  # the largest code: codes 0..15


@dataclass(frozen=True)
class AffineQuantized:
    """`w ≈ q · scale + minimum`, one scale and one minimum per (row, group of `group_size` inputs)."""

    q: np.ndarray  # uint8 [..., out, in], codes 0..15
    scale: np.ndarray  # float32 [..., out, in // group_size]
    minimum: np.ndarray  # float32 [..., out, in // group_size]
    group_size: int


def quantize_int4_asym(w: np.ndarray, group_size: int) -> AffineQuantized:
    """Quantize `w[..., out, in]` to codes 0..15 with a float32 scale and minimum per (row, group); the group
    must be a multiple of 32 dividing the input dimension (as the symmetric grid's)."""
    grouped = int4_groups(w, group_size)
    minimum = grouped.min(axis=-1).astype(np.float32)
    scale = ((grouped.max(axis=-1) - minimum) / LEVELS).astype(np.float32)
    safe = np.where(scale != 0, scale, 1.0).astype(np.float64)[..., None]
    q = np.clip(np.rint((grouped - minimum[..., None]) / safe), 0, LEVELS)
    q = np.where(scale[..., None] != 0, q, 0).astype(np.uint8).reshape(*grouped.shape[:-2], -1)
    return AffineQuantized(q=q, scale=scale, minimum=minimum, group_size=grouped.shape[-1])


def dequantize_int4_asym(t: AffineQuantized) -> np.ndarray:
    """The float32 weight `t` stands for: q · scale + minimum, group by group."""
    grouped = t.q.reshape(*t.q.shape[:-1], -1, t.group_size).astype(np.float32)
    return (grouped * t.scale[..., None] + t.minimum[..., None]).reshape(t.q.shape)
