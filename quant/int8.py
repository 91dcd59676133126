"""Symmetric int8 weight quantization, per output channel or per group along the input axis.

A weight `w[..., out, in]` becomes `q[..., out, in]` (int8 in [-127, 127]) and
`scale[..., out, in // group]` (float32) with `w ≈ q * scale` repeated over each group.
Pure numpy and deterministic: rounding is round-half-to-even in float64, so results are
bit-exact across machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QMAX = 127
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantizedTensor:
    """An explicit quantized value: `w ≈ q * scale`, groups of `group_size` along `axis` (-1)."""

    q: np.ndarray  # int8 [..., out, in]
    scale: np.ndarray  # float32 [..., out, in // group_size]
    group_size: int
    axis: int = -1

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes


@dataclass(frozen=True)
class QuantMetrics:
    """How far a dequantized tensor is from the original."""

    max_abs: float
    rel_fro: float
    cosine: float


def resolve_group_size(in_features: int, group_size: int | None) -> int:
    """The effective group: `None` or 0 means one group per output channel (the whole row)."""
    if not group_size:
        return in_features
    if group_size <= 0 or in_features % group_size:
        raise ValueError(
            f"group size {group_size} does not divide the input dimension {in_features}"
        )
    return group_size


def quantize_int8(w: np.ndarray, group_size: int | None = None) -> QuantizedTensor:
    """Quantize `w[..., out, in]` to int8 with one float32 scale per (row, group)."""
    w = np.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"expected a weight of shape [..., out, in], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight contains NaN or infinite values; cannot quantize")
    group = resolve_group_size(w.shape[-1], group_size)
    grouped = w.astype(np.float64).reshape(*w.shape[:-1], w.shape[-1] // group, group)
    amax = np.abs(grouped).max(axis=-1)  # [..., out, n_groups]
    scale = (amax / QMAX).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)[..., None]
    q = np.clip(np.rint(grouped / safe), -QMAX, QMAX)
    q = np.where(scale[..., None] > 0, q, 0).astype(np.int8).reshape(w.shape)
    return QuantizedTensor(q=q, scale=scale, group_size=group)


UNSIGNED_ZERO = 128  # MatMulNBits stores int8 codes as unsigned bytes q + 128


def to_unsigned(q: np.ndarray) -> np.ndarray:
    """int8 codes [-127, 127] as the unsigned bytes q + 128 that onnxruntime's MatMulNBits reads."""
    return (q.astype(np.int16) + UNSIGNED_ZERO).astype(np.uint8)


def from_unsigned(codes: np.ndarray) -> np.ndarray:
    """The int8 values (as float32) of unsigned MatMulNBits codes."""
    return codes.astype(np.float32) - np.float32(UNSIGNED_ZERO)


def dequantize(t: QuantizedTensor) -> np.ndarray:
    """The float32 weight that `t` stands for."""
    scale = np.repeat(t.scale, t.group_size, axis=-1)
    return (t.q.astype(np.float32) * scale).astype(np.float32)


def quant_error(w: np.ndarray, t: QuantizedTensor) -> QuantMetrics:
    """Max abs error, relative Frobenius error and cosine similarity of `dequantize(t)` vs `w`."""
    ref = np.asarray(w, dtype=np.float64).ravel()
    deq = dequantize(t).astype(np.float64).ravel()
    diff = ref - deq
    ref_norm, deq_norm = np.linalg.norm(ref), np.linalg.norm(deq)
    rel = float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff) > 0)
    if ref_norm > 0 and deq_norm > 0:
        cosine = float(ref @ deq / (ref_norm * deq_norm))
    else:
        cosine = 1.0 if ref_norm == deq_norm else 0.0
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    return QuantMetrics(max_abs=max_abs, rel_fro=rel, cosine=cosine)
