"""numba kernels that compute SwiGLU experts and the LM head straight from the mapped bytes.

The experts file is seen as `wbuf` (the weights' dtype: int8, or float32 for unquantized
experts) and `sbuf` (float32, the same bytes). An expert's gate/up [I, D] and down [D, I]
rows start at element offsets `wbase + wlay[0..2]` of `wbuf`; their scales at
`sbase + slay[0..2]` of `sbuf`. `gd`/`gi` are the group sizes along D and I (a whole row for
one scale per output channel). numba compiles one specialisation per weight dtype.

Every matrix is read through a view shaped [rows, groups, group] so that inner loops start
at 0: indexing a flat buffer at a run-time offset makes numba emit a wrap-around check that
turns the loads into gathers (measured 6x slower). Activations stay float32, so results equal
a float model with the dequantized weights up to rounding. Every kernel uses numba's numpy error
model: a NaN or a division by zero gives NaN/inf (which the session reports), never a Python exception.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_0 = np.float32(0.0)
_1 = np.float32(1.0)


@njit(cache=True, error_model="numpy", inline="always")
def _matrix(wbuf, sbuf, woff, soff, rows, cols, g):
    """(weights [rows, cols/g, g], scales [rows, cols/g]) of one matrix."""
    n = cols // g
    return (wbuf[woff:woff + rows * cols].reshape(rows, n, g), sbuf[soff:soff + rows * n].reshape(rows, n))


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _dot(w3, s2, x2, r):
    """row r of (w3 · s2) dotted with x2 (x viewed as [groups, g])."""
    acc = _0
    for gi in range(x2.shape[0]):
        part = _0
        for j in range(x2.shape[1]):
            part += np.float32(w3[r, gi, j]) * x2[gi, j]
        acc += part * s2[r, gi]
    return acc


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _gate_up(g3, gs, u3, us, x2, r):
    """silu(gate[r]·x) · (up[r]·x) in one pass over x."""
    ag = _0
    au = _0
    for gi in range(x2.shape[0]):
        pg = _0
        pu = _0
        for j in range(x2.shape[1]):
            xv = x2[gi, j]
            pg += np.float32(g3[r, gi, j]) * xv
            pu += np.float32(u3[r, gi, j]) * xv
        ag += pg * gs[r, gi]
        au += pu * us[r, gi]
    return ag / (_1 + np.exp(-ag)) * au


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _expert_into(x, wbuf, sbuf, wbase, sbase, wlay, slay, gd, gi, weight, hidden, out):
    """out[D] += weight · expert(x[D]); hidden is scratch [I]."""
    d, i = x.shape[0], hidden.shape[0]
    g3, gs = _matrix(wbuf, sbuf, wbase + wlay[0], sbase + slay[0], i, d, gd)
    u3, us = _matrix(wbuf, sbuf, wbase + wlay[1], sbase + slay[1], i, d, gd)
    d3, ds = _matrix(wbuf, sbuf, wbase + wlay[2], sbase + slay[2], d, i, gi)
    x2 = x.reshape(d // gd, gd)
    for r in range(i):
        hidden[r] = _gate_up(g3, gs, u3, us, x2, r)
    h2 = hidden.reshape(i // gi, gi)
    for r in range(d):
        out[r] += weight * _dot(d3, ds, h2, r)


@njit(cache=True, error_model="numpy", fastmath=True)
def moe_decode(x, wbuf, sbuf, wbases, sbases, weights, wlay, slay, gd, gi, hidden, out):
    """out[D] = Σ_j weights[j]·expert_j(x[D]) over the k experts at wbases/sbases; hidden: scratch [k, I]."""
    out[:] = _0
    for j in range(wbases.shape[0]):
        _expert_into(x, wbuf, sbuf, wbases[j], sbases[j], wlay, slay, gd, gi, weights[j], hidden[j], out)


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def moe_decode_parallel(x, wbuf, sbuf, wbases, sbases, weights, wlay, slay, gd, gi, hidden, out):
    """`moe_decode` with the k experts spread over the threads (one fork/join per layer)."""
    k, d = wbases.shape[0], x.shape[0]
    partial = np.zeros((k, d), dtype=np.float32)
    for j in prange(k):
        _expert_into(x, wbuf, sbuf, wbases[j], sbases[j], wlay, slay, gd, gi, weights[j], hidden[j], partial[j])
    for r in range(d):
        acc = _0
        for j in range(k):
            acc += partial[j, r]
        out[r] = acc


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def expert_tokens(x, wbuf, sbuf, wbase, sbase, wlay, slay, gd, gi, hidden, out):
    """out[n, D] = expert(x[n, D]) for a few tokens: each weight row is read once for all of them."""
    n, d = x.shape
    i = hidden.shape[1]
    g3, gs = _matrix(wbuf, sbuf, wbase + wlay[0], sbase + slay[0], i, d, gd)
    u3, us = _matrix(wbuf, sbuf, wbase + wlay[1], sbase + slay[1], i, d, gd)
    d3, ds = _matrix(wbuf, sbuf, wbase + wlay[2], sbase + slay[2], d, i, gi)
    x3 = x.reshape(n, d // gd, gd)
    for r in prange(i):
        for t in range(n):
            hidden[t, r] = _gate_up(g3, gs, u3, us, x3[t], r)
    h3 = hidden.reshape(n, i // gi, gi)
    for r in prange(d):
        for t in range(n):
            out[t, r] = _dot(d3, ds, h3[t], r)


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def dequantize_rows(wbuf, sbuf, woff, soff, rows, cols, g, out):
    """out[rows, cols] = the matrix at element woff of wbuf times its scales at soff of sbuf."""
    w3, s2 = _matrix(wbuf, sbuf, woff, soff, rows, cols, g)
    out3 = out.reshape(rows, cols // g, g)
    for r in prange(rows):
        for gi in range(cols // g):
            scale = s2[r, gi]
            for j in range(g):
                out3[r, gi, j] = np.float32(w3[r, gi, j]) * scale


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def norm_linear(x, norm_weight, eps, weight, scale, out):
    """out[T, V] = rmsnorm(x[T, D])·norm_weight @ (weight[V, D] · scale[V, D/g])ᵀ (an int8 or float LM head)."""
    t_n, d = x.shape
    v, n_groups = scale.shape
    g = d // n_groups
    xn = np.empty((t_n, n_groups, g), dtype=np.float32)
    for t in range(t_n):
        ss = _0
        for j in range(d):
            ss += x[t, j] * x[t, j]
        inv = _1 / np.sqrt(ss / d + eps)
        for j in range(d):
            xn[t, j // g, j % g] = x[t, j] * inv * norm_weight[j]
    w3 = weight.reshape(v, n_groups, g)
    for r in prange(v):
        for t in range(t_n):
            out[t, r] = _dot(w3, scale, xn[t], r)
