"""numba kernels that compute SwiGLU experts straight from int8 bytes in the memory map.

The experts file is seen as `qbuf` (int8) and `sbuf` (float32, the same bytes). An expert at
byte offset `base` holds gate/up [I, D] and down [D, I] int8 rows plus their float32 scales at
the offsets in `lay` (gate, up, down, gate_scale, up_scale, down_scale). `gd`/`gi` are the
quantization group sizes along D and I (a whole row when quantized per channel). Activations
stay float32, so results equal a float model with the dequantized weights up to rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _row_dot(qbuf, sbuf, qoff, soff, x, n, g):
    """Σ_j q[j]·scale[j // g]·x[j] over one int8 row of length n starting at byte qoff."""
    acc = np.float32(0.0)
    for grp in range(n // g):
        start = grp * g
        part = np.float32(0.0)
        for j in range(g):
            part += np.float32(qbuf[qoff + start + j]) * x[start + j]
        acc += part * sbuf[soff + grp]
    return acc


@njit(cache=True, fastmath=True, inline="always")
def _silu_gate_up(qbuf, sbuf, base, lay, x, r, d, gd):
    gate = _row_dot(qbuf, sbuf, base + lay[0] + r * d, (base + lay[3]) // 4 + r * (d // gd), x, d, gd)
    up = _row_dot(qbuf, sbuf, base + lay[1] + r * d, (base + lay[4]) // 4 + r * (d // gd), x, d, gd)
    return gate / (np.float32(1.0) + np.exp(-gate)) * up


@njit(cache=True, fastmath=True, parallel=True)
def moe_decode(x, qbuf, sbuf, bases, weights, lay, gd, gi, hidden, out):
    """out[D] = Σ_j weights[j]·expert(bases[j])(x[D]); `hidden` is scratch [k, I]."""
    k, i_dim = hidden.shape
    d = x.shape[0]
    for task in prange(k * i_dim):
        j, r = task // i_dim, task % i_dim
        hidden[j, r] = _silu_gate_up(qbuf, sbuf, bases[j], lay, x, r, d, gd)
    for r in prange(d):
        acc = np.float32(0.0)
        for j in range(k):
            base = bases[j]
            row = base + lay[2] + r * i_dim
            acc += weights[j] * _row_dot(qbuf, sbuf, row, (base + lay[5]) // 4 + r * (i_dim // gi),
                                         hidden[j], i_dim, gi)
        out[r] = acc


@njit(cache=True, fastmath=True, parallel=True)
def expert_tokens(x, qbuf, sbuf, base, lay, gd, gi, hidden, out):
    """out[n, D] = expert(base)(x[n, D]) for a few tokens: each weight row is read once."""
    n, d = x.shape
    i_dim = hidden.shape[1]
    for r in prange(i_dim):
        for t in range(n):
            hidden[t, r] = _silu_gate_up(qbuf, sbuf, base, lay, x[t], r, d, gd)
    for r in prange(d):
        row = base + lay[2] + r * i_dim
        srow = (base + lay[5]) // 4 + r * (i_dim // gi)
        for t in range(n):
            out[t, r] = _row_dot(qbuf, sbuf, row, srow, hidden[t], i_dim, gi)


@njit(cache=True, parallel=True)
def dequantize_rows(qbuf, sbuf, qoff, soff, rows, cols, g, out):
    """out[rows, cols] = int8 matrix at byte qoff times its scales at float offset soff."""
    per_row = cols // g
    for r in prange(rows):
        for c in range(cols):
            out[r, c] = np.float32(qbuf[qoff + r * cols + c]) * sbuf[soff + r * per_row + c // g]
