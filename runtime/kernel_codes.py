"""How the numba kernels read a matrix row, whatever the weights' scheme (quant.SCHEMES).

A matrix reaches the kernels as codes and float32 scales [rows, groups]. The codes are viewed
[rows, groups, group] when each is one element (int8, or float32 for unquantized experts, or the
uint8 codes of int8 dense linears) and [rows, groups, blocks, 16] when they are int4 nibbles packed
by blocks of 32 inputs (byte j of a block: input j in the low nibble, input j + 16 in the high one,
each stored + 8: int4 experts and LM heads; 4-bit dense linears, their inputs reordered to fit). numba
picks the loop by the view's rank when it compiles a kernel, so every kernel is written once; one call
covers whole rows (a call per group of 32 costs 4x). Each function here is also plain Python (numpy), for
reading and for tests.

The activations a row is dotted with are float32, viewed [groups, group], or int8-quantized by blocks of
32 (`quantize_activations`; a tuple: numba's parallel loops cannot pass a NamedTuple): then int8 and int4
rows take the integer block dots of `kernel_q8` instead, and the kernels compile a second specialisation.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit, types
from numba.core.errors import NumbaIRAssumptionWarning
from numba.extending import overload

from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .kernel_ir import BLOCK
from .kernel_q8 import TOKENS, dot4_q8, dot4x4_q8
from .kernel_vnni import NIBBLE_STEP, VNNI

_0 = np.float32(0.0)
_8 = np.float32(8.0)
_EXPONENT = np.int32(0x7F800000)  # a float32's exponent bits: all set for NaN and ±inf
_BY_127 = np.float32(1.0 / 127.0)  # a multiplication: LLVM turns a division by 127 into it anyway
NIBBLES = 16  # bytes per packed block of 32 int4 codes
# An overload compiles with these, not with its caller's flags: without fastmath no reduction vectorizes.
KERNEL_OPTIONS = {"fastmath": True, "error_model": "numpy"}
# The row dots are inlined into the kernels' row loops (a call per four rows cost 25% of the speed). numba's
# pedantic SSA check then flags loop variables of the inlined body as "not in scope"; the results are
# checked against numpy and PyTorch in the tests, so that compile-time note is silenced here.
warnings.filterwarnings("ignore", message=r"variable '_rows?_dot", category=NumbaIRAssumptionWarning)


QuantizedActivations = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@njit(cache=True, error_model="numpy")
def _mixed(codes):
    """16 · codes j − codes j+16 of each block's j < 16, int16 [n / 2]: the portable int4 dot's operand."""
    mixed = np.empty(codes.shape[0] // 2, dtype=np.int16)
    for b in range(codes.shape[0] // BLOCK):
        for j in range(BLOCK // 2):
            mixed[b * BLOCK // 2 + j] = np.int16(16) * codes[b * BLOCK + j] - codes[b * BLOCK + BLOCK // 2 + j]
    return mixed


@njit(cache=True, error_model="numpy")
def nibble_operand(codes, scales, sums):
    """What the VNNI int4 dots read besides the rows (`kernel_vnni`), int8 [2n], 64 bytes a block, by steps of
    NIBBLE_STEP blocks (then one of 2 and of 1 for the last blocks % NIBBLE_STEP): a step of s blocks from block b
    on, at byte 64·b, holds the codes of its blocks' inputs 0-15 then 16-31 (the packed rows' low nibbles, then
    their high ones), s·4 int32 (−8 · Σ codes of each block, then three zeros) and s·4 float32 (each block's scale
    four times)."""
    n = codes.shape[0]
    blocks = n // BLOCK
    operand = np.zeros(2 * n, dtype=np.int8)
    offsets = operand.view(np.int32)
    spread = operand.view(np.float32)
    half = BLOCK // 2
    first = 0
    size = NIBBLE_STEP
    while size:
        while blocks - first >= size:
            base = 2 * BLOCK * first
            for k in range(size):
                for j in range(half):
                    operand[base + half * k + j] = codes[BLOCK * (first + k) + j]
                    operand[base + half * (size + k) + j] = codes[BLOCK * (first + k) + half + j]
                offsets[(base + BLOCK * size) // 4 + 4 * k] = np.int32(-8) * np.int32(sums[first + k])
                for j in range(4):
                    spread[(base + 3 * half * size) // 4 + 4 * k + j] = scales[first + k]
            first += size
            if size < NIBBLE_STEP:
                break
        size //= 2
    return operand


@njit(cache=True, error_model="numpy", inline="always")
def _mixed_operand(codes, scales, sums):
    """`_mixed` (the portable dots take the scales and sums apart)."""
    return _mixed(codes)


@njit(cache=True, error_model="numpy", inline="always")
def _shift(scale, total):
    """8 · scale · Σ codes: what the portable int4 and uint8 dots take off (`kernel_q8`)."""
    return _8 * scale * np.float32(total)


@njit(cache=True, error_model="numpy", inline="always")
def _total(scale, total):
    """Σ codes, which the VNNI dots put in their accumulators (`kernel_vnni`)."""
    return np.int32(total)


# What this CPU's row dots take: the codes' dtype; the int4 rows' operand, its dtype and elements per two codes;
# the blocks' sums and their dtype.
ACTIVATION_CODES = np.int8 if VNNI else np.int16
_int4_operand, _INT4_OPERAND, _INT4_PER_2 = (nibble_operand, np.int8, 4) if VNNI else (_mixed_operand, np.int16, 1)
_block_sum, _SUMS = (_total, np.int32) if VNNI else (_shift, np.float32)


@njit(cache=True, error_model="numpy")
def quantize_activations(x: np.ndarray) -> QuantizedActivations:
    """x [n] (n a multiple of 32) quantized by blocks of 32 as `quant.quantize_activations` does, bit for bit
    but for exact ties (x / scale = k + ½ may round either way here; no fastmath): (codes [n] in [-127, 127]
    (`ACTIVATION_CODES`: int8 for the VNNI row dots, else int16), the int4 rows' operand (VNNI: the codes in
    `nibble_operand`, int8 [2n]; else `_mixed`, see `kernel_q8`), scales [n / 32] float32, sums [n / 32] (VNNI: Σ codes,
    int32; else 8 · scale · Σ codes, float32)). A NaN or infinity makes its block's scale NaN."""
    blocks = x.shape[0] // BLOCK
    codes = np.empty(x.shape[0], dtype=ACTIVATION_CODES)
    scales = np.empty(blocks, dtype=np.float32)
    sums = np.empty(blocks, dtype=_SUMS)
    bits = x.view(np.int32)  # NaN and ±inf by their exponent: a float test could be folded away once inlined
    for b in range(blocks):
        block = x[b * BLOCK:(b + 1) * BLOCK]
        largest = _0
        not_finite = False
        for j in range(BLOCK):
            largest = max(largest, abs(block[j]))
            not_finite |= bits[b * BLOCK + j] & _EXPONENT == _EXPONENT
        scale = np.float32(np.nan) if not_finite else largest * _BY_127
        inverse = np.float32(1.0) / scale if scale > _0 else _0
        total = 0
        for j in range(BLOCK):
            code = np.int16(np.rint(block[j] * inverse))
            codes[b * BLOCK + j] = code
            total += code
        scales[b] = scale
        sums[b] = _block_sum(scale, total)
    return codes, _int4_operand(codes, scales, sums), scales, sums


def activations(x: np.ndarray, group: int, quantized: bool | None) -> np.ndarray | QuantizedActivations:
    """What the row dots take for x [n]: float32 viewed [n / group, group] when `quantized` is None,
    else int8 blocks of 32 (`quantize_activations`). numba picks by the type of `quantized`."""
    return x.reshape(-1, group) if quantized is None else quantize_activations(x)


def token_activations(x: np.ndarray, group: int, quantized: bool | None) -> np.ndarray | QuantizedActivations:
    """`activations` of each row of x [T, n], for `token_row`: float32 [T, n / group, group], or the int8 blocks
    of every row as four arrays [T, ...]."""
    if quantized is None:
        return x.reshape(x.shape[0], -1, group)
    return tuple(np.stack(parts) for parts in zip(*(quantize_activations(row) for row in x), strict=True))


def token_row(xs: np.ndarray | QuantizedActivations, t: int) -> np.ndarray | QuantizedActivations:
    """Token t's activations out of `token_activations`."""
    return xs[t] if isinstance(xs, np.ndarray) else tuple(part[t] for part in xs)


def codes_view(flat: np.ndarray, rows: int, groups: int, group: int) -> np.ndarray:
    """A matrix's codes from its stored elements (flat or [rows, ...]): int4 (uint8) as blocks, else plain."""
    if flat.dtype == np.uint8:
        return flat.reshape(rows, groups, group // (2 * NIBBLES), NIBBLES)
    return flat.reshape(rows, groups, group)


def row_values(w: np.ndarray, s: np.ndarray, r: int, out2: np.ndarray) -> None:
    """out2 [groups, group] = row r of codes `w` times its scales `s` [rows, groups]."""
    codes = w[r]
    if codes.ndim == 3:  # int4 blocks [groups, blocks, 16]
        wide = codes.astype(np.int32)
        codes = np.concatenate([wide & 15, wide >> 4], axis=-1).reshape(codes.shape[0], -1) - 8
    out2[:] = codes.astype(np.float32) * s[r, :, None]


def row_dot(w: np.ndarray, s: np.ndarray, r: int, x2: np.ndarray) -> np.float32:
    """Row r of (codes `w` · scales `s`) dotted with x2 [groups, group]."""
    values = np.empty_like(x2)
    row_values(w, s, r, values)
    return np.float32((values * x2).sum())


def rows_dot4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2):
    """`row_dot` of four rows (of one or several matrices) in one pass. Rows a page or more apart give
    the core four memory streams at once: one tops out near 13-20 GB/s here, four reach ~90% of the
    read bandwidth (kernel microbenchmark, one thread)."""
    return tuple(row_dot(w, s, r, x2) for w, s, r in ((wa, sa, ra), (wb, sb, rb), (wc, sc, rc), (wd, sd, rd)))


def rows4_tokens4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, xs, tokens, out):
    """out [4 rows, 4 tokens] = `rows_dot4` of the four rows with the activations of each of the tokens `tokens`
    [4] (rows of `token_activations`' result xs). Where the CPU's dots allow (int8 or int4 rows, int8 activations,
    VNNI: `kernel_q8.dot4x4_q8`), each row's bytes are read once for the four tokens."""
    for t in range(TOKENS):
        out[:, t] = rows_dot4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, token_row(xs, tokens[t]))


@njit(cache=True, error_model="numpy", inline="always")
def _nibble(byte, high):
    """A packed byte's low or high nibble as float32, + 8 left in (int32 all along: int64 is 2x slower)."""
    v = np.int32(byte)
    return np.float32(np.int32(v >> 4)) if high else np.float32(np.int32(v & 15))


@overload(activations)
def _activations(x, group, quantized):
    if isinstance(quantized, types.NoneType):
        return lambda x, group, quantized: x.reshape(x.shape[0] // group, group)
    return lambda x, group, quantized: quantize_activations(x)


@overload(token_activations)
def _token_activations(x, group, quantized):
    if isinstance(quantized, types.NoneType):
        return lambda x, group, quantized: x.reshape(x.shape[0], x.shape[1] // group, group)

    def quantize_rows(x, group, quantized):
        t_n, n = x.shape
        codes = np.empty((t_n, n), dtype=ACTIVATION_CODES)
        mixed = np.empty((t_n, n * _INT4_PER_2 // 2), dtype=_INT4_OPERAND)
        scales = np.empty((t_n, n // BLOCK), dtype=np.float32)
        sums = np.empty((t_n, n // BLOCK), dtype=_SUMS)
        for t in range(t_n):
            codes[t], mixed[t], scales[t], sums[t] = quantize_activations(x[t])
        return codes, mixed, scales, sums
    return quantize_rows


@overload(token_row, inline="always")
def _token_row(xs, t):
    if isinstance(xs, types.BaseTuple):
        return lambda xs, t: (xs[0][t], xs[1][t], xs[2][t], xs[3][t])
    return lambda xs, t: xs[t]


@overload(codes_view)
def _codes_view(flat, rows, groups, group):
    if flat.dtype == types.uint8:
        return lambda flat, rows, groups, group: flat.reshape(rows, groups, group // (2 * NIBBLES), NIBBLES)
    return lambda flat, rows, groups, group: flat.reshape(rows, groups, group)


@overload(row_values, jit_options=KERNEL_OPTIONS)
def _row_values(w, s, r, out2):
    if w.ndim == 4:
        def int4(w, s, r, out2):
            for g in range(w.shape[1]):
                scale = s[r, g]
                for blk in range(w.shape[2]):
                    base = 2 * NIBBLES * blk
                    for j in range(NIBBLES):  # low nibbles, then high ones: contiguous stores
                        out2[g, base + j] = (_nibble(w[r, g, blk, j], False) - _8) * scale
                    for j in range(NIBBLES):
                        out2[g, base + NIBBLES + j] = (_nibble(w[r, g, blk, j], True) - _8) * scale
        return int4

    def plain(w, s, r, out2):
        for g in range(w.shape[1]):
            scale = s[r, g]
            for j in range(w.shape[2]):
                out2[g, j] = np.float32(w[r, g, j]) * scale
    return plain


@overload(row_dot, jit_options=KERNEL_OPTIONS, inline="always")
def _row_dot(w, s, r, x2):
    if isinstance(x2, types.BaseTuple):  # quantized activations: the integer dot of four rows, used once
        return lambda w, s, r, x2: dot4_q8(w[r], w[r], w[r], w[r], s[r], s[r], s[r], s[r], *x2)[0]
    if w.ndim == 4:
        def int4(w, s, r, x2):
            acc = _0
            for g in range(w.shape[1]):
                part = _0
                total = _0
                for blk in range(w.shape[2]):
                    base = 2 * NIBBLES * blk
                    for j in range(NIBBLES):
                        byte = w[r, g, blk, j]
                        lo = x2[g, base + j]
                        hi = x2[g, base + NIBBLES + j]
                        part += _nibble(byte, False) * lo + _nibble(byte, True) * hi
                        total += lo + hi
                acc += (part - _8 * total) * s[r, g]  # codes are nibble − 8
            return acc
        return int4

    def plain(w, s, r, x2):
        acc = _0
        for g in range(w.shape[1]):
            part = _0
            for j in range(w.shape[2]):
                part += np.float32(w[r, g, j]) * x2[g, j]
            acc += part * s[r, g]
        return acc
    return plain


@overload(rows_dot4, jit_options=KERNEL_OPTIONS, inline="always")
def _rows_dot4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2):
    if isinstance(x2, types.BaseTuple):  # quantized activations
        def quantized(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2):
            return dot4_q8(wa[ra], wb[rb], wc[rc], wd[rd], sa[ra], sb[rb], sc[rc], sd[rd], *x2)
        return quantized
    if wa.ndim == 4:
        def int4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2):
            a = _0
            b = _0
            c = _0
            d = _0
            for g in range(wa.shape[1]):
                pa = _0
                pb = _0
                pc = _0
                pd = _0
                total = _0
                for blk in range(wa.shape[2]):
                    base = 2 * NIBBLES * blk
                    for j in range(NIBBLES):
                        lo = x2[g, base + j]
                        hi = x2[g, base + NIBBLES + j]
                        total += lo + hi
                        va = wa[ra, g, blk, j]
                        vb = wb[rb, g, blk, j]
                        vc = wc[rc, g, blk, j]
                        vd = wd[rd, g, blk, j]
                        pa += _nibble(va, False) * lo + _nibble(va, True) * hi
                        pb += _nibble(vb, False) * lo + _nibble(vb, True) * hi
                        pc += _nibble(vc, False) * lo + _nibble(vc, True) * hi
                        pd += _nibble(vd, False) * lo + _nibble(vd, True) * hi
                shift = _8 * total  # codes are nibble − 8
                a += (pa - shift) * sa[ra, g]
                b += (pb - shift) * sb[rb, g]
                c += (pc - shift) * sc[rc, g]
                d += (pd - shift) * sd[rd, g]
            return a, b, c, d
        return int4

    def plain(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, x2):
        a = _0
        b = _0
        c = _0
        d = _0
        for g in range(x2.shape[0]):
            pa = _0
            pb = _0
            pc = _0
            pd = _0
            for j in range(x2.shape[1]):
                xv = x2[g, j]
                pa += np.float32(wa[ra, g, j]) * xv
                pb += np.float32(wb[rb, g, j]) * xv
                pc += np.float32(wc[rc, g, j]) * xv
                pd += np.float32(wd[rd, g, j]) * xv
            a += pa * sa[ra, g]
            b += pb * sb[rb, g]
            c += pc * sc[rc, g]
            d += pd * sd[rd, g]
        return a, b, c, d
    return plain


@overload(rows4_tokens4, jit_options=KERNEL_OPTIONS, inline="always")
def _rows4_tokens4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, xs, tokens, out):
    int4 = wa.dtype == types.uint8 and wa.ndim == 4
    if isinstance(xs, types.BaseTuple) and (wa.dtype == types.int8 or int4) and xs[0].dtype == types.int8:
        def together(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, xs, tokens, out):
            dot4x4_q8(wa[ra], wb[rb], wc[rc], wd[rd], sa[ra], sb[rb], sc[rc], sd[rd], xs[0], xs[1], xs[2], xs[3],
                      tokens, out)
        return together

    def token_by_token(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd, xs, tokens, out):
        for t in range(TOKENS):
            out[0, t], out[1, t], out[2, t], out[3, t] = rows_dot4(wa, sa, ra, wb, sb, rb, wc, sc, rc, wd, sd, rd,
                                                                   token_row(xs, tokens[t]))
    return token_by_token
