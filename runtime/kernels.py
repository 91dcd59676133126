"""numba kernels that compute SwiGLU experts and the LM head straight from the mapped bytes.

The experts of one layer reach the kernels as one `ExpertBytes` record: the experts file seen in
the codes' dtype (int8; uint8 for int4 codes packed two per byte; float32 for unquantized experts)
and as float32 (for the scales), where each expert's span starts, and where its GATE, UP and DOWN
matrices and their scales sit inside a span. numba compiles one specialisation per codes' dtype.

Every matrix is read through a view shaped [rows, groups, group] (int4: [rows, groups, blocks, 16],
see `kernel_codes`) so that inner loops start at 0: indexing a flat buffer at a run-time offset makes
numba emit a wrap-around check that turns the loads into gathers (measured 6x slower). The expert
kernels take `quantized`: None keeps the activations float32 (results equal a float model with the
dequantized weights up to rounding); INT8_ACTIVATIONS quantizes each expert's input and hidden vector
by blocks of 32 (`quant.quantize_activations`) and computes int8 and int4 rows with integer block dots
(`kernel_q8`), at the memory bandwidth instead of the unpacking's speed. Every
kernel uses numba's numpy error model: a NaN or a division by zero gives NaN/inf (which the session
reports), never a Python exception.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .fast_exp import fast_exp
from .kernel_codes import (
    activations,
    codes_view,
    row_dot,
    row_values,
    rows4_tokens4,
    rows_dot4,
    token_activations,
    token_row,
)
from .kernel_q8 import TOKENS

_0 = np.float32(0.0)
_1 = np.float32(1.0)
GATE, UP, DOWN = 0, 1, 2  # an expert's matrices, in span order
INT8_ACTIVATIONS = True  # the expert kernels' `quantized` argument (None: float32 activations)


class ExpertBytes(NamedTuple):
    """Where one MoE layer's experts are in the mapped experts file, in the units the kernels index.

    Each expert is of one of two kinds: 0 reads `weights` (int8, or float32 unquantized), 1 reads
    `packed` (int4). A layer whose experts are all of one kind has `packed` = `weights`, so numba
    compiles one path for it.
    """

    weights: np.ndarray  # the whole file viewed in the wide codes' dtype (int8 or float32; uint8 if all int4)
    packed: np.ndarray  # the whole file as uint8 for int4 experts (or `weights` again)
    scales: np.ndarray  # the whole file viewed as float32
    kinds: np.ndarray  # [E] int64: 0 wide, 1 int4
    weight_start: np.ndarray  # [E] int64: byte offset of each expert's span
    scale_start: np.ndarray  # [E] int64: index in `scales` of each expert's span
    weight_offset: np.ndarray  # [2, 3] int64: GATE, UP, DOWN codes inside a span of each kind, in bytes
    scale_offset: np.ndarray  # [2, 3] int64: their scales inside a span (in float32 elements)
    group_hidden: int  # scale group along the hidden dimension D (GATE, UP rows); D for one per channel
    group_inner: int  # scale group along the expert's inner dimension I (DOWN rows); I for one per channel


@njit(cache=True, error_model="numpy", inline="always")
def _matrix(codes, b, kind, expert, part, rows, cols, group):
    """(codes [rows, cols/group, ...] (see `kernel_codes`), scales [rows, cols/group]) of matrix `part` of
    `expert`, read from `codes` (`b.weights` or `b.packed`, as `kind` says)."""
    n = cols // group
    w0 = (b.weight_start[expert] + b.weight_offset[kind, part]) // codes.itemsize
    s0 = b.scale_start[expert] + b.scale_offset[kind, part]
    count = rows * cols // (2 if kind == 1 else 1)
    return codes_view(codes[w0:w0 + count], rows, n, group), b.scales[s0:s0 + rows * n].reshape(rows, n)


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def dot_row(w3, s2, x2, r):
    """row r of (w3 · s2) dotted with x2 (x viewed as [groups, g])."""
    return row_dot(w3, s2, r, x2)


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _dots4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2):
    """Four rows (of one or several matrices with their scales) dotted with x2 in one pass
    (`kernel_codes.rows_dot4`: four memory streams)."""
    return rows_dot4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2)


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def dot_rows4(w3, s2, x2, r0, r1, r2, r3):
    """Rows r0..r3 of (w3 · s2) dotted with x2 in one pass (four streams, see `_dots4`)."""
    return rows_dot4(w3, s2, r0, w3, s2, r1, w3, s2, r2, w3, s2, r3, x2)


@njit(cache=True, error_model="numpy", fastmath=True)
def _expert_into(x2, b, expert, weight, hidden, out, quantized):
    """out[D] += weight · expert(x) (GATE, UP [I, D]; DOWN [D, I]) for x as the row dots take it
    (`kernel_codes.activations`); hidden is scratch [I]."""
    kind = b.kinds[expert]  # a run-time value: a literal would compile `_expert_rows` once per kind
    if kind == 1:  # one layer may mix int4 and int8 experts (`packed` is `weights` in a bundle without int4 ones)
        _expert_rows(x2, b.packed, b, kind, expert, weight, hidden, out, quantized)
    else:
        _expert_rows(x2, b.weights, b, kind, expert, weight, hidden, out, quantized)


@njit(cache=True, error_model="numpy", fastmath=True)
def _expert_rows(x2, codes, b, kind, expert, weight, hidden, out, quantized):
    """`_expert_into` for an expert whose codes are in `codes`.

    Rows r and r + I/2 of GATE and UP go together, and rows r + c·D/4 of DOWN: four streams each.
    """
    d, i = out.shape[0], hidden.shape[0]
    g3, gs = _matrix(codes, b, kind, expert, GATE, i, d, b.group_hidden)
    u3, us = _matrix(codes, b, kind, expert, UP, i, d, b.group_hidden)
    d3, ds = _matrix(codes, b, kind, expert, DOWN, d, i, b.group_inner)
    half = i // 2
    up = np.empty(i, dtype=np.float32)
    for r in range(half):
        hidden[r], hidden[r + half], up[r], up[r + half] = _dots4(g3, gs, r, g3, gs, r + half, u3, us, r, u3, us,
                                                                  r + half, x2)
    for r in range(2 * half, i):
        hidden[r] = row_dot(g3, gs, r, x2)
        up[r] = row_dot(u3, us, r, x2)
    for r in range(i):  # SiLU in its own loop: `fast_exp` vectorizes there
        hidden[r] = hidden[r] / (_1 + fast_exp(-hidden[r])) * up[r]
    h2 = activations(hidden, b.group_inner, quantized)
    q = d // 4
    for r in range(q):
        a0, a1, a2, a3 = dot_rows4(d3, ds, h2, r, r + q, r + 2 * q, r + 3 * q)
        out[r] += weight * a0
        out[r + q] += weight * a1
        out[r + 2 * q] += weight * a2
        out[r + 3 * q] += weight * a3
    for r in range(4 * q, d):
        out[r] += weight * dot_row(d3, ds, h2, r)


@njit(cache=True, error_model="numpy", fastmath=True)
def moe_decode(x, b, experts, gates, hidden, out, quantized):
    """out[D] = Σ_j gates[j]·expert_j(x[D]) over the k `experts` of record b; hidden: scratch [k, I].
    `quantized`: None (float32 activations) or INT8_ACTIVATIONS."""
    moe_decode_from(x, b, experts, gates, hidden, out, quantized, 0)


@njit(cache=True, error_model="numpy", fastmath=True)
def moe_decode_from(x, b, experts, gates, hidden, out, quantized, first):
    """`moe_decode` of experts[first:] added onto `out` as a call for experts[:first] left it (first = 0: from
    zero), so that a call can stop at an expert whose bytes are still being read and the next go on from there,
    with `moe_decode`'s result."""
    if first == 0:
        out[:] = _0
    x2 = activations(x, b.group_hidden, quantized)  # once for the experts
    for j in range(first, experts.shape[0]):
        _expert_into(x2, b, experts[j], gates[j], hidden[j], out, quantized)


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def moe_decode_parallel(x, b, experts, gates, hidden, out, quantized):
    """`moe_decode` with the k experts spread over the threads (one fork/join per layer)."""
    k, d = experts.shape[0], x.shape[0]
    partial = np.zeros((k, d), dtype=np.float32)
    x2 = activations(x, b.group_hidden, quantized)
    for j in prange(k):
        _expert_into(x2, b, experts[j], gates[j], hidden[j], partial[j], quantized)
    for r in range(d):
        acc = _0
        for j in range(k):
            acc += partial[j, r]
        out[r] = acc


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def expert_pairs(x, b, experts, starts, pairs, hidden, out, quantized):
    """out[p] = expert(x[p // k]) for the (token, slot) pairs p = token·k + slot of a prompt routed to each
    of `experts`: expert g's pairs are pairs[starts[g]:starts[g + 1]], taken four at a time (`_expert_tile`:
    each of the expert's rows read once for four tokens), the rest one by one through the decode kernel's
    rows. The experts are spread over the threads; hidden is scratch [T·k, I], out [T·k, D] (other rows left
    as they are)."""
    k = out.shape[0] // x.shape[0]
    xs = token_activations(x, b.group_hidden, quantized)  # each token's once, whatever its experts
    for g in prange(experts.shape[0]):
        first, end = starts[g], starts[g + 1]
        whole = first + (end - first) // TOKENS * TOKENS
        for j in range(first, whole, TOKENS):
            dest = pairs[j:j + TOKENS]
            _expert_tile(xs, dest // k, b, experts[g], dest, hidden.shape[1], out, quantized)
        for j in range(whole, end):
            p = pairs[j]
            out[p, :] = _0
            _expert_into(token_row(xs, p // k), b, experts[g], _1, hidden[p], out[p], quantized)


@njit(cache=True, error_model="numpy", fastmath=True)
def _expert_tile(xs, tokens, b, expert, dest, i, out, quantized):
    """out[dest[t]] = expert(token tokens[t]) for four tokens (rows of xs, `token_activations`' result); i is
    the expert's inner width."""
    kind = b.kinds[expert]
    if kind == 1:
        _expert_rows4(xs, tokens, b.packed, b, kind, expert, dest, i, out, quantized)
    else:
        _expert_rows4(xs, tokens, b.weights, b, kind, expert, dest, i, out, quantized)


@njit(cache=True, error_model="numpy", fastmath=True)
def _expert_rows4(xs, tokens, codes, b, kind, expert, dest, i, out, quantized):
    """`_expert_rows` (weight 1, written, not added) for four tokens at once: the same rows go together, each
    row dotted with the four tokens' activations (`rows4_tokens4`); every value equals `_expert_rows`'."""
    d = out.shape[1]
    g3, gs = _matrix(codes, b, kind, expert, GATE, i, d, b.group_hidden)
    u3, us = _matrix(codes, b, kind, expert, UP, i, d, b.group_hidden)
    d3, ds = _matrix(codes, b, kind, expert, DOWN, d, i, b.group_inner)
    half = i // 2
    hidden = np.empty((TOKENS, i), dtype=np.float32)
    up = np.empty((TOKENS, i), dtype=np.float32)
    tile = np.empty((4, TOKENS), dtype=np.float32)  # [row, token]
    for r in range(half):
        rows4_tokens4(g3, gs, r, g3, gs, r + half, u3, us, r, u3, us, r + half, xs, tokens, tile)
        for t in range(TOKENS):
            hidden[t, r], hidden[t, r + half] = tile[0, t], tile[1, t]
            up[t, r], up[t, r + half] = tile[2, t], tile[3, t]
    for r in range(2 * half, i):
        for t in range(TOKENS):
            hidden[t, r] = row_dot(g3, gs, r, token_row(xs, tokens[t]))
            up[t, r] = row_dot(u3, us, r, token_row(xs, tokens[t]))
    for t in range(TOKENS):
        for r in range(i):
            hidden[t, r] = hidden[t, r] / (_1 + fast_exp(-hidden[t, r])) * up[t, r]
    hs = token_activations(hidden, b.group_inner, quantized)
    own = np.arange(TOKENS)
    q = d // 4
    for r in range(q):
        rows4_tokens4(d3, ds, r, d3, ds, r + q, d3, ds, r + 2 * q, d3, ds, r + 3 * q, hs, own, tile)
        for t in range(TOKENS):
            for c in range(4):
                out[dest[t], r + c * q] = tile[c, t]
    for r in range(4 * q, d):
        for t in range(TOKENS):
            out[dest[t], r] = dot_row(d3, ds, token_row(hs, t), r)


@njit(cache=True, error_model="numpy", fastmath=True)
def dequantize(b, expert, part, out):
    """out[rows, cols] = matrix `part` of `expert`, its weights times their scales."""
    rows, cols = out.shape
    group = b.group_inner if part == DOWN else b.group_hidden
    out3 = out.reshape(rows, cols // group, group)
    kind = b.kinds[expert]
    if kind == 1:
        _dequantize_rows(b.packed, b, kind, expert, part, rows, cols, group, out3)
    else:
        _dequantize_rows(b.weights, b, kind, expert, part, rows, cols, group, out3)


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def _dequantize_rows(codes, b, kind, expert, part, rows, cols, group, out3):
    w3, s3 = _matrix(codes, b, kind, expert, part, rows, cols, group)
    for r in prange(rows):
        row_values(w3, s3, r, out3[r])


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def norm_linear(x, norm_weight, eps, weight, scale, out, quantized):
    """out[T, V] = rmsnorm(x[T, D])·norm_weight @ (weight[V, D] · scale[V, D/g])ᵀ (an int8 or float LM head; int4:
    weight uint8 [V, D/2] as the int4 scheme packs it); `quantized` (int8 and int4 heads only): the normalized rows
    quantized to int8 blocks of 32 first."""
    t_n, d = x.shape  # d from x: an int4 weight's rows are d / 2 bytes
    v, n_groups = scale.shape
    g = d // n_groups
    xn = np.empty((t_n, d), dtype=np.float32)
    for t in range(t_n):
        ss = _0
        for j in range(d):
            ss += x[t, j] * x[t, j]
        inv = _1 / np.sqrt(ss / d + eps)
        for j in range(d):
            xn[t, j] = x[t, j] * inv * norm_weight[j]
    xs = token_activations(xn, g, quantized)
    w3 = codes_view(weight, v, n_groups, g)
    q = v // 4  # rows r + c·V/4 together: four memory streams (see dot_rows4)
    for r in prange(q):
        for t in range(t_n):
            out[t, r], out[t, r + q], out[t, r + 2 * q], out[t, r + 3 * q] = dot_rows4(w3, scale, token_row(xs, t), r,
                                                                                   r + q, r + 2 * q, r + 3 * q)
    for r in range(4 * q, v):
        for t in range(t_n):
            out[t, r] = dot_row(w3, scale, token_row(xs, t), r)
