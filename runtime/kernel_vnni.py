"""The row dots of `kernel_q8` for x86 CPUs with AVX512-VNNI or AVX-VNNI: `vpdpbusd` sums four u8 × s8 products per
32-bit lane in one instruction, where the portable IR needs a widening, a `vpdpwssd` and a mask or add.

Rows are read as unsigned bytes: uint8 codes (int8 + 128, the dense linears'), int8 codes flipped to
int8 + 128 as they load (one XOR), or int4 nibbles (+ 8). The activations are the int8 codes (`codes`), the
int4 rows' operand (`kernel_codes.nibble_operand`), the blocks' scales and the sums of their codes (`totals`).
The offset (128 or 8 times a block's Σ codes) is put into the 32-bit accumulator before the products go in,
so a block's integer dot comes out exact and signed. int8 rows: then one conversion and one FMA with the
block's scale per row and block, the row's scale once per group. int4 rows, four blocks a step (64 bytes of
each row, 512-bit vectors; two 256-bit halves with AVX-VNNI only): per row one load, a mask, a shift and two
`vpdpbusd` (the low nibbles with the blocks' inputs 0-15, the high ones with 16-31); then the four rows' block
sums are gathered into one vector, block by block and row by row (three rounds of two shuffles and an add), so
the conversion and the activations' and rows' scales are one instruction each per step for the four rows
together. The inputs in that order, the offsets and the activations' scales spread over four lanes are made
once per token (`nibble_operand`); the rows' scales, per step for groups of 32 (four loads and a
transposition) or 64, else once per group.

Prompts (`kernel_q8.dot4x4_q8`): four rows dotted with four tokens in one pass, each row's bytes loaded (int4:
masked and shifted) once, then per token the same operations as one token's dots, so every value is the same bit
for bit. int4: 16 accumulators and the four rows' nibbles fit the 32 vector registers (no spill in the step
loops). 128-token prefill, one thread, time inside `kernels.expert_pairs`: int4 granite-1b-shape 0.55-0.58 s →
0.40-0.41 (groups of 128: 0.53-0.58 → 0.39-0.40), olmoe-shape 0.19 → 0.144.

Measured on one core (benchmarks/expert_kernels.py: four rows a pass, page-aligned matrices; GB/s of codes and
scales; portable IR in brackets): streamed from memory (256 MB, read bandwidth 31 GB/s) int8 per channel 31
(28-31), int4 groups of 32 27-29 (16), groups of 128 28-29 (16), i.e. int4 rows 1.45x (g32) and 1.75x (g128)
as many weights per second as int8 rows, where the portable IR gives 0.85-1.0x; reading four rows a pass with
no work and no prefetch reaches 27-28 here. From the caches (256-row matrices, 20 passes): int8 66-72, int4 g32 51-56,
g128 46-50 (41-47 GB/s of codes), where two blocks a step with the float work per row gave 34-38.

`VNNI` says whether numba compiles for such a CPU (the other CPUs, aarch64 included, take the portable IR);
MOEDGE_PORTABLE_KERNELS=1 forces the portable one, to measure the two side by side.
"""

from __future__ import annotations

import os

from llvmlite import binding, ir
from numba.core import cgutils, config

from .kernel_ir import (
    BLOCK,
    CONTRACT,
    F32,
    FAST,
    I8,
    I32,
    I64,
    LANES,
    PREFETCH_AHEAD,
    accumulate,
    at,
    const,
    hsum,
    load,
    prefetch,
    splat,
    vec,
    zeros,
)
from .numba_cache import ROW_PREFETCH

PORTABLE_ONLY = os.environ.get("MOEDGE_PORTABLE_KERNELS", "") not in ("", "0")


def _target_features() -> str:
    """The features numba compiles for: the host's unless NUMBA_CPU_NAME names another CPU, then
    NUMBA_CPU_FEATURES."""
    if config.CPU_NAME not in (None, "host"):
        return config.CPU_FEATURES or ""
    return config.CPU_FEATURES or binding.get_host_cpu_features().flatten()


def _compiles_for_vnni(features: str) -> bool:
    """Whether numba compiles for a CPU with 256-bit `vpdpbusd`: AVX512-VNNI with AVX512-VL, or AVX-VNNI (Alder
    Lake and later; LLVM emits the VEX form there, checked by compiling for `alderlake`)."""
    return ("+avx512vnni" in features and "+avx512vl" in features) or "+avxvnni" in features


VNNI = not PORTABLE_ONLY and _compiles_for_vnni(_target_features())
# 512-bit `vpdpbusd` (AVX512-VNNI with AVX512BW); else the int4 dots' 512-bit ones are two 256-bit ones
_WIDE = all(f"+{name}" in _target_features() for name in ("avx512f", "avx512bw", "avx512vnni"))


def _dpbusd(builder: ir.IRBuilder, acc: ir.Value, unsigned_bytes: ir.Value, signed_bytes: ir.Value) -> ir.Value:
    """acc + the sums of four adjacent u8 × s8 products, per 32-bit lane (`vpdpbusd` on 16 or 32 bytes)."""
    n = acc.type.count
    if n == 16 and not _WIDE:
        halves = [ir.Constant(vec(I32, 8), list(range(k, k + 8))) for k in (0, 8)]
        words = [acc] + [builder.bitcast(v, vec(I32, n)) for v in (unsigned_bytes, signed_bytes)]
        split = [[builder.shuffle_vector(v, v, half) for half in halves] for v in words]
        lo, hi = (_dpbusd(builder, *(parts[k] for parts in split)) for k in (0, 1))
        return builder.shuffle_vector(lo, hi, ir.Constant(vec(I32, 16), list(range(16))))
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec(I32, n), [vec(I32, n)] * 3),
                                        f"llvm.x86.avx512.vpdpbusd.{32 * n}")
    return builder.call(fn, [acc, builder.bitcast(unsigned_bytes, vec(I32, n)),
                             builder.bitcast(signed_bytes, vec(I32, n))])


def _offsets(builder: ir.IRBuilder, totals: ir.Value, blocks: list[ir.Value], offset: int, n: int) -> ir.Value:
    """<n x i32> zeros but −offset · totals[block] in lane 0 (and in lane 4 for a second block)."""
    lanes = ir.Constant(vec(I32, n), [0] * n)
    for k, block in enumerate(blocks):
        value = builder.mul(at(builder, totals, block), ir.Constant(I32, -offset))
        lanes = builder.insert_element(lanes, value, ir.Constant(I32, k * LANES // 2))
    return lanes


def _byte_dots(builder, rows, row_scales, tokens, blocks, groups, signed):
    """Four int8 (`signed`) or uint8 int8 + 128 rows, each dotted with every token's activations (one or more
    activation tuples: a row's bytes load and flip once for all of them) → [row][token] floats."""
    flip = ir.Constant(vec(I8, BLOCK), [-128] * BLOCK)
    per_group = builder.sdiv(blocks, groups)
    acc = [zeros(builder, len(tokens)) for _ in rows]
    with cgutils.for_range(builder, groups) as group:
        part = [zeros(builder, len(tokens)) for _ in rows]
        with cgutils.for_range(builder, per_group) as inner:
            block = builder.add(builder.mul(group.index, per_group), inner.index)
            start = builder.mul(block, ir.Constant(I64, BLOCK))
            xv = [load(builder, x, start, vec(I8, BLOCK)) for x, _, _, _ in tokens]
            xs = [splat(builder, at(builder, x_scale, block)) for _, _, x_scale, _ in tokens]
            offsets = [_offsets(builder, totals, [block], 128, LANES) for _, _, _, totals in tokens]
            ahead = builder.add(start, ir.Constant(I64, PREFETCH_AHEAD))
            for i, row in enumerate(rows):
                prefetch(builder, row, ahead)
                w = load(builder, row, start, vec(I8, BLOCK))
                w = builder.xor(w, flip) if signed else w
                for t in range(len(tokens)):
                    dot = _dpbusd(builder, offsets[t], w, xv[t])
                    accumulate(builder, part[i][t], builder.fmul(builder.sitofp(dot, vec(F32, LANES)), xs[t],
                                                                 flags=CONTRACT))
        for i, scales in enumerate(row_scales):
            row_scale = splat(builder, at(builder, scales, group.index))
            for t in range(len(tokens)):
                accumulate(builder, acc[i][t], builder.fmul(builder.load(part[i][t]), row_scale, flags=CONTRACT))
    return [[hsum(builder, builder.load(a)) for a in row] for row in acc]


def _nibbles(builder: ir.IRBuilder, packed: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Packed bytes → (low nibbles, high nibbles), each byte 0-15 (the int4 codes + 8)."""
    n = packed.type.count
    mask = ir.Constant(vec(I8, n), [15] * n)
    return builder.and_(packed, mask), builder.and_(builder.lshr(packed, ir.Constant(vec(I8, n), [4] * n)), mask)


# Blocks per step of the int4 dots: 4 = a 64-byte line of each row, 512-bit vectors. The activations' int4 operand
# (`kernel_codes.nibble_operand`) is laid out by steps of this many blocks, then a step of 2 and of 1 for the rest.
NIBBLE_STEP = 4
NIBBLE_AHEAD = ROW_PREFETCH.int4  # bytes of a row ahead for the software prefetch, per machine (`row_prefetch`): on
# the VM of sessions 1-9 256-384 measured best, 512 5-20% slower, 1024 and more 20-40%; on session 10's, 2048


def _lanes(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, pick: list[int]) -> ir.Value:
    """Per 4-lane chunk c of a and b: lanes pick (0-3 a's lanes of chunk c, 4-7 b's)."""
    n = a.type.count
    index = [4 * c + k if k < 4 else n + 4 * c + k - 4 for c in range(n // 4) for k in pick]
    return builder.shuffle_vector(a, b, ir.Constant(vec(I32, n), index))


def _reduce4(builder: ir.IRBuilder, dots: list[ir.Value]) -> ir.Value:
    """Four rows' <4s x i32> (4 lanes a block) → <4s x i32>: per block k, lanes 4k..4k+3 its sums of rows 0-3."""
    a, b, c, d = dots
    ab = builder.add(_lanes(builder, a, b, [0, 4, 1, 5]), _lanes(builder, a, b, [2, 6, 3, 7]))
    cd = builder.add(_lanes(builder, c, d, [0, 4, 1, 5]), _lanes(builder, c, d, [2, 6, 3, 7]))
    return builder.add(_lanes(builder, ab, cd, [0, 1, 4, 5]), _lanes(builder, ab, cd, [2, 3, 6, 7]))


def _nibble_step(builder, rows, operands, first, s):
    """Blocks first..first + s - 1 of four int4 rows dotted with each token's activations (`operands`: the tokens'
    `nibble_operand`s), times the activations' scales: per token <4s x float>, lane 4k + i row i's block first + k.
    A row's line is loaded, masked and shifted once for all the tokens."""
    n = 4 * s
    base = builder.mul(first, ir.Constant(I64, 2 * BLOCK))  # the operand's 64 bytes a block: codes, offsets, scales
    at_row = builder.mul(first, ir.Constant(I64, BLOCK // 2))
    ahead = builder.add(at_row, ir.Constant(I64, NIBBLE_AHEAD))
    nibbles = []
    for row in rows:
        if s == NIBBLE_STEP:
            prefetch(builder, row, ahead)
        nibbles.append(_nibbles(builder, load(builder, row, at_row, vec(I8, 16 * s))))
    products = []
    for x in operands:
        x_lo = load(builder, x, base, vec(I8, 16 * s))
        x_hi = load(builder, x, builder.add(base, ir.Constant(I64, 16 * s)), vec(I8, 16 * s))
        offsets = load(builder, x, builder.add(base, ir.Constant(I64, 32 * s)), vec(I32, n))
        xs = load(builder, x, builder.add(base, ir.Constant(I64, 48 * s)), vec(F32, n))
        dots = [_dpbusd(builder, _dpbusd(builder, offsets, lo, x_lo), hi, x_hi) for lo, hi in nibbles]
        products.append(builder.fmul(builder.sitofp(_reduce4(builder, dots), vec(F32, n)), xs, flags=CONTRACT))
    return products


def _transpose(builder, per_row: list[ir.Value]) -> ir.Value:
    """Four rows' <s x float> (one value a block) → <4s x float>, lane 4k + i row i's value of block k."""
    s = per_row[0].type.count
    one = builder.shuffle_vector(per_row[0], per_row[1], ir.Constant(vec(I32, 2 * s), list(range(2 * s))))
    two = builder.shuffle_vector(per_row[2], per_row[3], ir.Constant(vec(I32, 2 * s), list(range(2 * s))))
    index = [i * s + k if i < 2 else 2 * s + (i - 2) * s + k for k in range(s) for i in range(4)]
    return builder.shuffle_vector(one, two, ir.Constant(vec(I32, 4 * s), index))


def _repeat(builder, per_row: list[ir.Value], s: int) -> ir.Value:
    """Four rows' scalars → <4s x float>: [0, 1, 2, 3] s times."""
    four = ir.Constant(vec(F32, 4), ir.Undefined)
    for i, value in enumerate(per_row):
        four = builder.insert_element(four, value, ir.Constant(I32, i))
    return builder.shuffle_vector(four, four, ir.Constant(vec(I32, 4 * s), list(range(4)) * s))


def _fold(builder, v: ir.Value) -> ir.Value:
    """<4s x float> → <4 x float>, the sum of its 4-lane chunks."""
    while v.type.count > 4:
        n = v.type.count // 2
        v = builder.fadd(builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), list(range(n)))),
                         builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), list(range(n, 2 * n)))), flags=FAST)
    return v


def _scattered(builder, row_scales, first, s, per_group):
    """<4s x float>: the rows' scales of blocks first..first + s - 1, any group size."""
    groups = [builder.sdiv(builder.add(first, ir.Constant(I64, k)), per_group) for k in range(s)]
    per_row = []
    for scales in row_scales:
        v = ir.Constant(vec(F32, s), ir.Undefined)
        for k, group in enumerate(groups):
            v = builder.insert_element(v, at(builder, scales, group), ir.Constant(I32, k))
        per_row.append(v)
    return _transpose(builder, per_row)


def _consecutive(builder, row_scales, first, s, per_group):
    """As `_scattered` for groups of 32: s consecutive scales a row (no prefetch: measured no faster)."""
    return _transpose(builder, [load(builder, scales, first, vec(F32, s)) for scales in row_scales])


def _doubled(builder, row_scales, first, s, per_group):
    """As `_scattered` for groups of 64 (s even): s / 2 scales a row, each twice."""
    group = builder.sdiv(first, ir.Constant(I64, 2))
    twice = ir.Constant(vec(I32, s), [k // 2 for k in range(s)])
    per_row = []
    for scales in row_scales:
        half = load(builder, scales, group, vec(F32, s // 2))
        per_row.append(builder.shuffle_vector(half, half, twice))
    return _transpose(builder, per_row)


def _whole(builder, row_scales, first, s, per_group):
    """As `_scattered` for groups of s blocks: one scale a row."""
    group = builder.udiv(first, ir.Constant(I64, s))  # per_group is s: a shift, not a division
    return _repeat(builder, [at(builder, scales, group) for scales in row_scales], s)


def _nibble_dots(builder, rows, row_scales, operands, blocks, groups):
    """Four int4 rows, NIBBLE_STEP blocks a step, each dotted with every token's activations (`operands`: one or
    more tokens' `nibble_operand`s) → [row][token] floats. Per row and step one load, a mask and a shift for all
    the tokens, then per token two `vpdpbusd` (the activations' offsets seeded) and the four rows' block sums
    gathered into one vector (four lanes a block: two shuffles and an add per two vectors, twice), converted,
    times the activations' scales (`nibble_operand`) and the rows'. Groups of a multiple of NIBBLE_STEP blocks:
    the rows' scales once per group; else per step (loaded by row and transposed); the last blocks % NIBBLE_STEP
    by steps of 2 and 1 (their scales block by block)."""
    s = NIBBLE_STEP
    step = ir.Constant(I64, s)
    per_group = builder.sdiv(blocks, groups)
    tokens = range(len(operands))
    acc = [cgutils.alloca_once_value(builder, const(0.0, 4 * s)) for _ in tokens]
    grouped = builder.and_(builder.icmp_signed("==", builder.srem(per_group, step), ir.Constant(I64, 0)),
                           builder.icmp_signed("!=", per_group, step))
    with builder.if_else(grouped) as (by_group, by_step):
        with by_group:
            per_step = builder.sdiv(per_group, step)
            with cgutils.for_range(builder, groups) as group:
                part = [cgutils.alloca_once_value(builder, const(0.0, 4 * s)) for _ in tokens]
                with cgutils.for_range(builder, per_step) as inner:
                    first = builder.mul(builder.add(builder.mul(group.index, per_step), inner.index), step)
                    for t, product in enumerate(_nibble_step(builder, rows, operands, first, s)):
                        accumulate(builder, part[t], product)
                scale = _repeat(builder, [at(builder, scales, group.index) for scales in row_scales], s)
                for t in tokens:
                    accumulate(builder, acc[t], builder.fmul(builder.load(part[t]), scale, flags=CONTRACT))
        with by_step:
            full = builder.sdiv(blocks, step)

            def steps(scales_of):
                with cgutils.for_range(builder, full) as quad:
                    first = builder.mul(quad.index, step)
                    scale = scales_of(builder, row_scales, first, s, per_group)
                    for t, product in enumerate(_nibble_step(builder, rows, operands, first, s)):
                        accumulate(builder, acc[t], builder.fmul(product, scale, flags=CONTRACT))

            def choose(cases):
                (size, scales_of), *rest = cases
                if not rest:
                    steps(scales_of)
                    return
                with builder.if_else(builder.icmp_signed("==", per_group, ir.Constant(I64, size))) as (this, other):
                    with this:
                        steps(scales_of)
                    with other:
                        choose(rest)

            choose([(1, _consecutive), (2, _doubled), (s, _whole), (0, _scattered)])
            tail = [cgutils.alloca_once_value(builder, const(0.0, 4)) for _ in tokens]
            size = s // 2
            while size:
                left = builder.sub(blocks, builder.mul(builder.sdiv(blocks, ir.Constant(I64, 2 * size)),
                                                       ir.Constant(I64, 2 * size)))  # blocks % (2 size)
                with builder.if_then(builder.icmp_signed(">=", left, ir.Constant(I64, size))):
                    first = builder.sub(blocks, left)
                    scale = _scattered(builder, row_scales, first, size, per_group)
                    for t, product in enumerate(_nibble_step(builder, rows, operands, first, size)):
                        accumulate(builder, tail[t], _fold(builder, builder.fmul(product, scale, flags=CONTRACT)))
                size //= 2
            widen = ir.Constant(vec(I32, 4 * s), [0, 1, 2, 3] + [4] * 4 * (s - 1))  # lane 4: a zero
            for t in tokens:
                accumulate(builder, acc[t], builder.shuffle_vector(builder.load(tail[t]), const(0.0, 4), widen))
    totals = [_fold(builder, builder.load(a)) for a in acc]
    return [[builder.extract_element(total, ir.Constant(I32, i)) for total in totals] for i in range(4)]


def vnni_dots(builder, rows, row_scales, activations, blocks, groups, packed, unsigned):
    """The four rows' dots (see the module doc) → four float32 values."""
    if packed:
        return [dots[0] for dots in _nibble_dots(builder, rows, row_scales, [activations[1]], blocks, groups)]
    return [dots[0] for dots in _byte_dots(builder, rows, row_scales, [activations], blocks, groups, not unsigned)]


def vnni_token_dots(builder, rows, row_scales, tokens, blocks, groups, packed):
    """Four int8 or int4 (`packed`) rows dotted with several tokens' activations in one pass → [row][token]
    floats, each the value `vnni_dots` gives for that row and token (the same operations in the same order)."""
    if packed:
        return _nibble_dots(builder, rows, row_scales, [x for _, x, _, _ in tokens], blocks, groups)
    return _byte_dots(builder, rows, row_scales, tokens, blocks, groups, True)
