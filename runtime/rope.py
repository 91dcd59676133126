"""Rotary position embedding as one rotation matrix per position, shared by every layer of a step."""

from __future__ import annotations

import functools

import numpy as np

from .spec import ModelSpec


@functools.lru_cache(maxsize=8)
def _inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """θ^(−2i/Hd) [Hd/2] in float32 (once per model: a decode step asks for one position's angles)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / np.float32(theta) ** exponent).astype(np.float32)
    inv_freq.setflags(write=False)
    return inv_freq


def rope_angles(spec: ModelSpec, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, Hd/2] of the angles (start + t)·θ^(−2i/Hd), computed in float32 as the reference models do."""
    inv_freq = _inverse_frequencies(spec.head_dim, spec.rope_theta)
    angles = np.arange(start, start + count, dtype=np.float32)[:, None] * inv_freq  # [T, Hd/2]
    return np.cos(angles), np.sin(angles)


def rope_rotation(spec: ModelSpec, start: int, count: int) -> np.ndarray:
    """R [T, Hd, Hd] with rope(x_t) = x_t @ R_t for x_t [heads, Hd] (rotate-half convention).

    For i < Hd/2: out[i] = x[i]·cos − x[i+Hd/2]·sin and out[i+Hd/2] = x[i+Hd/2]·cos + x[i]·sin,
    with angle (start + t)·θ^(−2i/Hd) computed in float32 as the reference models do.
    """
    half = spec.head_dim // 2
    cos, sin = rope_angles(spec, start, count)
    rotation = np.zeros((count, spec.head_dim, spec.head_dim), dtype=np.float32)
    i = np.arange(half)
    rotation[:, i, i] = cos
    rotation[:, i + half, i + half] = cos
    rotation[:, i + half, i] = -sin
    rotation[:, i, i + half] = sin
    return rotation
