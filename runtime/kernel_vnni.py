"""The row dots of `kernel_q8` for x86 CPUs with AVX512-VNNI or AVX-VNNI: `vpdpbusd` sums four u8 × s8 products per
32-bit lane in one instruction, where the portable IR needs a widening, a `vpdpwssd` and a mask or add.

Rows are read as unsigned bytes: uint8 codes (int8 + 128, the dense linears'), int8 codes flipped to
int8 + 128 as they load (one XOR), or int4 nibbles (+ 8). The activations are the int8 codes (`codes`), their
copy in `nibble_order` for int4 rows, the blocks' scales and the sums of their codes (`totals`). The offset
(128 or 8 times a block's Σ codes) is put into the 32-bit accumulator before the products go in, so a
block's integer dot comes out exact and signed; then one conversion and one FMA with the block's scale per
row and block (int8), or per row and two blocks (int4: 32 bytes = two packed blocks, the low nibbles one
`vpdpbusd` with the two blocks' inputs 0-15, the high ones with 16-31). The row's scale multiplies once per
group, or per two blocks for groups of 32.

Measured on one core (kernel microbenchmark, four rows a pass, 256 MB of codes streamed from memory, with the
software prefetch of `kernel_ir`; portable IR in brackets): int8 per channel 31-33 (29) GB/s of codes, int4
groups of 32 19.8 (12.4), groups of 128 24.7 (15.2); i.e. int4 rows 1.2-1.5x as many weights per second as
int8 rows, where the portable IR gives 0.85-1.05x.

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
    I8,
    I32,
    I64,
    LANES,
    PREFETCH_AHEAD,
    accumulate,
    at,
    hsum,
    load,
    prefetch,
    splat,
    vec,
    zeros,
)

PORTABLE_ONLY = os.environ.get("MOEDGE_PORTABLE_KERNELS", "") not in ("", "0")
_SPREAD = ir.Constant(vec(I32, LANES), [0] * (LANES // 2) + [1] * (LANES // 2))  # two values → 4 lanes each


def _compiles_for_vnni() -> bool:
    """Whether numba compiles for a CPU with 256-bit `vpdpbusd`: AVX512-VNNI with AVX512-VL, or AVX-VNNI (Alder
    Lake and later; LLVM emits the VEX form there, checked by compiling for `alderlake`). The target is the
    host unless NUMBA_CPU_NAME names another, then NUMBA_CPU_FEATURES."""
    if config.CPU_NAME not in (None, "host"):
        features = config.CPU_FEATURES or ""
    else:
        features = config.CPU_FEATURES or binding.get_host_cpu_features().flatten()
    return ("+avx512vnni" in features and "+avx512vl" in features) or "+avxvnni" in features


VNNI = not PORTABLE_ONLY and _compiles_for_vnni()


def _dpbusd(builder: ir.IRBuilder, acc: ir.Value, unsigned_bytes: ir.Value, signed_bytes: ir.Value) -> ir.Value:
    """acc + the sums of four adjacent u8 × s8 products, per 32-bit lane (`vpdpbusd` on 16 or 32 bytes)."""
    n = acc.type.count
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


def _nibble_pair(builder, rows, activations, pair):
    """Per row, blocks 2·pair and 2·pair + 1 dotted with the activations: 8 float lanes (0-3 the first block's,
    4-7 the second's), times the activations' scales."""
    _, x, x_scale, totals = activations
    start = builder.mul(pair, ir.Constant(I64, 2 * BLOCK))
    x_lo = load(builder, x, start, vec(I8, BLOCK))
    x_hi = load(builder, x, builder.add(start, ir.Constant(I64, BLOCK)), vec(I8, BLOCK))
    first = builder.mul(pair, ir.Constant(I64, 2))
    offsets = _offsets(builder, totals, [first, builder.add(first, ir.Constant(I64, 1))], 8, LANES)
    two = load(builder, x_scale, first, vec(F32, 2))
    xs = builder.shuffle_vector(two, two, _SPREAD)
    products = []
    ahead = builder.add(builder.mul(pair, ir.Constant(I64, BLOCK)), ir.Constant(I64, PREFETCH_AHEAD))
    for row in rows:
        prefetch(builder, row, ahead)
        lo, hi = _nibbles(builder, load(builder, row, builder.mul(pair, ir.Constant(I64, BLOCK)), vec(I8, BLOCK)))
        dot = _dpbusd(builder, _dpbusd(builder, offsets, lo, x_lo), hi, x_hi)
        products.append(builder.fmul(builder.sitofp(dot, vec(F32, LANES)), xs, flags=CONTRACT))
    return products


def _nibble_last(builder, rows, row_scales, activations, blocks, per_group, acc):
    """acc += the odd last block of int4 rows (16 bytes), in lane 0."""
    _, x, x_scale, totals = activations
    last = builder.sub(blocks, ir.Constant(I64, 1))
    start = builder.mul(builder.sdiv(blocks, ir.Constant(I64, 2)), ir.Constant(I64, 2 * BLOCK))
    x_lo = load(builder, x, start, vec(I8, BLOCK // 2))
    x_hi = load(builder, x, builder.add(start, ir.Constant(I64, BLOCK // 2)), vec(I8, BLOCK // 2))
    offsets = _offsets(builder, totals, [last], 8, LANES // 2)
    group = builder.sdiv(last, per_group)
    for i, row in enumerate(rows):
        lo, hi = _nibbles(builder, load(builder, row, builder.mul(last, ir.Constant(I64, BLOCK // 2)),
                                        vec(I8, BLOCK // 2)))
        dot = _dpbusd(builder, _dpbusd(builder, offsets, lo, x_lo), hi, x_hi)
        scale = builder.fmul(at(builder, x_scale, last), at(builder, row_scales[i], group), flags=CONTRACT)
        value = builder.fmul(hsum(builder, builder.sitofp(dot, vec(F32, LANES // 2))), scale, flags=CONTRACT)
        accumulate(builder, acc[i], builder.insert_element(ir.Constant(vec(F32, LANES), [0.0] * LANES), value,
                                                           ir.Constant(I32, 0)))


def _nibble_dots(builder, rows, row_scales, activations, blocks, groups):
    """Four int4 rows, two blocks a step. Groups of an even number of blocks: the row's scale once per group;
    else per pair of blocks (two consecutive scales for groups of 32), and an odd last block on its own."""
    per_group = builder.sdiv(blocks, groups)
    acc = zeros(builder, len(rows))
    even = builder.icmp_signed("==", builder.srem(per_group, ir.Constant(I64, 2)), ir.Constant(I64, 0))
    with builder.if_else(even) as (grouped, paired):
        with grouped:
            half = builder.sdiv(per_group, ir.Constant(I64, 2))
            with cgutils.for_range(builder, groups) as group:
                part = zeros(builder, len(rows))
                with cgutils.for_range(builder, half) as inner:
                    pair = builder.add(builder.mul(group.index, half), inner.index)
                    for slot, product in zip(part, _nibble_pair(builder, rows, activations, pair), strict=True):
                        accumulate(builder, slot, product)
                for i, scales in enumerate(row_scales):
                    row_scale = splat(builder, at(builder, scales, group.index))
                    accumulate(builder, acc[i], builder.fmul(builder.load(part[i]), row_scale, flags=CONTRACT))
        with paired:
            one = builder.icmp_signed("==", per_group, ir.Constant(I64, 1))

            def by_pairs(scales_of):
                with cgutils.for_range(builder, builder.sdiv(blocks, ir.Constant(I64, 2))) as pair:
                    first = builder.mul(pair.index, ir.Constant(I64, 2))
                    for i, product in enumerate(_nibble_pair(builder, rows, activations, pair.index)):
                        two = scales_of(row_scales[i], first)
                        accumulate(builder, acc[i], builder.fmul(product, builder.shuffle_vector(two, two, _SPREAD),
                                                                 flags=CONTRACT))

            def scattered(scales, first):
                two = ir.Constant(vec(F32, 2), ir.Undefined)
                for k in range(2):
                    group = builder.sdiv(builder.add(first, ir.Constant(I64, k)), per_group)
                    two = builder.insert_element(two, at(builder, scales, group), ir.Constant(I32, k))
                return two

            def consecutive(scales, first):  # groups of 32: the scales stream like the codes, a quarter as fast
                prefetch(builder, scales, builder.add(first, ir.Constant(I64, PREFETCH_AHEAD // 8)))
                return load(builder, scales, first, vec(F32, 2))

            with builder.if_else(one) as (by_block, other):
                with by_block:
                    by_pairs(consecutive)
                with other:
                    by_pairs(scattered)
            odd = builder.icmp_signed("!=", builder.srem(blocks, ir.Constant(I64, 2)), ir.Constant(I64, 0))
            with builder.if_then(odd):
                _nibble_last(builder, rows, row_scales, activations, blocks, per_group, acc)
    return [hsum(builder, builder.load(a)) for a in acc]


def vnni_dots(builder, rows, row_scales, activations, blocks, groups, packed, unsigned):
    """The four rows' dots (see the module doc) → four float32 values."""
    if packed:
        return _nibble_dots(builder, rows, row_scales, activations, blocks, groups)
    return [dots[0] for dots in _byte_dots(builder, rows, row_scales, [activations], blocks, groups, not unsigned)]


def vnni_token_dots(builder, rows, row_scales, tokens, blocks, groups):
    """Four int8 rows dotted with several tokens' activations in one pass → [row][token] floats, each the value
    `vnni_dots` gives for that row and token (the same operations in the same order)."""
    return _byte_dots(builder, rows, row_scales, tokens, blocks, groups, True)
