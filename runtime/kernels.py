"""numba kernels that compute SwiGLU experts straight from the bytes in the memory map.

The experts file is seen as `wbuf` (the weights' dtype: int8, or float32 for unquantized
experts) and `sbuf` (float32, the same bytes). An expert's gate/up [I, D] and down [D, I]
rows start at element offsets `wbase + wlay[0..2]` of `wbuf`; their scales at
`sbase + slay[0..2]` of `sbuf`. `gd`/`gi` are the group sizes along D and I (a whole row for
one scale per output channel). numba compiles one specialisation per weight dtype.
Activations stay float32, so results equal a float model with the dequantized weights up to
rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _row_dot(wbuf, sbuf, woff, soff, x, n, g):
    """Σ_j w[j]·scale[j // g]·x[j] over one row of length n starting at element woff."""
    acc = np.float32(0.0)
    for grp in range(n // g):
        start = grp * g
        part = np.float32(0.0)
        for j in range(g):
            part += np.float32(wbuf[woff + start + j]) * x[start + j]
        acc += part * sbuf[soff + grp]
    return acc


@njit(cache=True, fastmath=True, inline="always")
def _silu_gate_up(wbuf, sbuf, wbase, sbase, wlay, slay, x, r, d, gd):
    per_row = d // gd
    gate = _row_dot(wbuf, sbuf, wbase + wlay[0] + r * d, sbase + slay[0] + r * per_row, x, d, gd)
    up = _row_dot(wbuf, sbuf, wbase + wlay[1] + r * d, sbase + slay[1] + r * per_row, x, d, gd)
    return gate / (np.float32(1.0) + np.exp(-gate)) * up


@njit(cache=True, fastmath=True, parallel=True)
def moe_decode(x, wbuf, sbuf, wbases, sbases, weights, wlay, slay, gd, gi, hidden, out):
    """out[D] = Σ_j weights[j]·expert_j(x[D]) over the k experts at wbases/sbases; hidden: scratch [k, I]."""
    k, i_dim = hidden.shape
    d = x.shape[0]
    for task in prange(k * i_dim):
        j, r = task // i_dim, task % i_dim
        hidden[j, r] = _silu_gate_up(wbuf, sbuf, wbases[j], sbases[j], wlay, slay, x, r, d, gd)
    per_row = i_dim // gi
    for r in prange(d):
        acc = np.float32(0.0)
        for j in range(k):
            acc += weights[j] * _row_dot(wbuf, sbuf, wbases[j] + wlay[2] + r * i_dim,
                                         sbases[j] + slay[2] + r * per_row, hidden[j], i_dim, gi)
        out[r] = acc


@njit(cache=True, fastmath=True, parallel=True)
def expert_tokens(x, wbuf, sbuf, wbase, sbase, wlay, slay, gd, gi, hidden, out):
    """out[n, D] = expert(x[n, D]) for a few tokens: each weight row is read once for all of them."""
    n, d = x.shape
    i_dim = hidden.shape[1]
    for r in prange(i_dim):
        for t in range(n):
            hidden[t, r] = _silu_gate_up(wbuf, sbuf, wbase, sbase, wlay, slay, x[t], r, d, gd)
    per_row = i_dim // gi
    for r in prange(d):
        for t in range(n):
            out[t, r] = _row_dot(wbuf, sbuf, wbase + wlay[2] + r * i_dim, sbase + slay[2] + r * per_row,
                                 hidden[t], i_dim, gi)


@njit(cache=True, parallel=True)
def dequantize_rows(wbuf, sbuf, woff, soff, rows, cols, g, out):
    """out[rows, cols] = the matrix at element woff of wbuf times its scales at soff of sbuf."""
    per_row = cols // g
    for r in prange(rows):
        for c in range(cols):
            out[r, c] = np.float32(wbuf[woff + r * cols + c]) * sbuf[soff + r * per_row + c // g]
