"""Activations quantized per token to int8 by blocks of 32, as the runtime's expert kernels do.

Each block of 32 consecutive values gets one float32 scale d = max |x| · (1 / 127) and codes
q = round(x / d) (computed as x · (1 / d), ties to even) in [-127, 127]: ggml's Q8_0 with a float32
scale. This is the reference the kernels are tested against (the same codes, exact ties aside), and
what a PyTorch reference applies to an expert's inputs to check the quantized-activation kernels.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BY_LEVELS = np.float32(1.0 / 127.0)  # codes in [-127, 127]


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [..., n] (n a multiple of 32) → (codes int8 [..., n / 32, 32], scales float32 [..., n / 32])."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % BLOCK:
        raise ValueError(f"activations are quantized by blocks of {BLOCK}; got a last dimension of {x.shape[-1]}")
    blocks = x.reshape(*x.shape[:-1], -1, BLOCK)
    scales = np.abs(blocks).max(axis=-1) * BY_LEVELS
    with np.errstate(divide="ignore"):
        inverse = np.where(scales > 0, np.float32(1.0) / scales, np.float32(0.0)).astype(np.float32)
    codes = np.rint(blocks * inverse[..., None]).astype(np.int8)
    return codes, scales.astype(np.float32)


def fake_quantize_activations(x: np.ndarray) -> np.ndarray:
    """x [..., n] as the expert kernels see it: quantized by blocks of 32 and back to float32."""
    codes, scales = quantize_activations(x)
    return (codes * scales[..., None]).reshape(np.shape(x)).astype(np.float32)
