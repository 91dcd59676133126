"""Four weight rows dotted with int8-quantized activations, in integer arithmetic: the `dot4_q8` intrinsic.

The activations come in blocks of 32 (`quant.activations`: codes in [-127, 127], one float32 scale per block;
`kernel_codes.quantize_activations` lays them out for this CPU's dots). A row's codes are int8 (32 bytes a
block), uint8 holding int8 + 128 (the dense linears' MatMulNBits codes) or int4 nibbles (16 bytes a block,
`kernel_codes`). On x86 CPUs with AVX512-VNNI the dots are `kernel_vnni`'s; elsewhere (aarch64 included) the
portable IR below.

Portable IR: per block and row the codes are widened to 16-bit lanes, multiplied with the activations' codes
(int16) and summed in adjacent pairs into eight 32-bit lanes, which are converted to float and added into
eight float lanes with the block's two scales: no horizontal sum until the row ends (llama.cpp's
`ggml_vec_dot_q4_0_q8_0` works the same way). An int4 block's 16 bytes b = lo + 16·hi are not split in two:
16·Σ(lo·x_j + hi·x_j+16) = Σ lo·(16·x_j − x_j+16) + Σ b·x_j+16, so one mask and the activations' `mixed` codes
(16·x_j − x_j+16, made once per token) replace a shift per row and block. Seven vector operations per row and
block. The IR is generic (vectors of i8/i16/i32/float, shuffles, sext/zext): LLVM lowers the
product-then-pair-sum pattern to `vpmaddwd` (`vpdpwssd` with AVX512-VNNI) on x86 and to widening
multiply-adds on aarch64; nothing here names a target's instruction or assumes its vector width or
alignment. numba's own loops could not do this: a block's dot, written as a loop, ends in a horizontal sum
per block, which measured slower than the float kernels.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernel_ir import (
    BLOCK,
    CONTRACT,
    F32,
    FAST,
    I8,
    I16,
    I32,
    I64,
    LANES,
    PREFETCH_AHEAD,
    accumulate,
    array_of,
    at,
    hsum,
    load,
    prefetch,
    splat,
    vec,
    zeros,
)
from .kernel_vnni import vnni_dots, vnni_token_dots

_EVEN = ir.Constant(vec(I32, LANES), list(range(0, 2 * LANES, 2)))
_ODD = ir.Constant(vec(I32, LANES), list(range(1, 2 * LANES, 2)))


def _pair_dot(builder: ir.IRBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
    """<16 x i16> · <16 x i16> → <8 x i32>: 32-bit products, adjacent pairs summed (the `vpmaddwd` pattern)."""
    p = builder.mul(builder.sext(a, vec(I32)), builder.sext(b, vec(I32)))
    return builder.add(builder.shuffle_vector(p, p, _EVEN), builder.shuffle_vector(p, p, _ODD))


def _block_codes(builder: ir.IRBuilder, row: ir.Value, block: ir.Value, packed: bool,
                 unsigned: bool) -> tuple[ir.Value, ir.Value]:
    """A row's 32 codes of `block` as two <16 x i16>: inputs 0-15 and 16-31 (`unsigned`: + 128 left in); int4:
    the low nibbles and the whole bytes (see the module doc; nibbles + 8 left in)."""
    if packed:  # byte j: input j in the low nibble, input j + 16 in the high one
        wide = builder.zext(load(builder, row, builder.mul(block, ir.Constant(I64, BLOCK // 2)), vec(I8)), vec(I16))
        return builder.and_(wide, ir.Constant(vec(I16), [15] * 2 * LANES)), wide
    start = builder.mul(block, ir.Constant(I64, BLOCK))
    widen = builder.zext if unsigned else builder.sext
    return tuple(widen(load(builder, row, builder.add(start, ir.Constant(I64, half)), vec(I8)), vec(I16))
                 for half in (0, BLOCK // 2))


def _portable_dots(builder, rows, row_scales, activations, blocks, groups, packed, unsigned):
    """The four rows' dots in generic vector IR (activations: `codes` int16, `mixed` int16, scales, shifts)."""
    x, x_mixed, x_scale, x_shift = activations
    offset = 1.0 if packed else 16.0  # `shifts` is 8·Σ codes·scale: 8 the nibbles' offset, 128 = 16·8 the bytes'
    per_group = builder.sdiv(blocks, groups)
    acc = zeros(builder, len(rows))
    shift = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in rows]
    with cgutils.for_range(builder, groups) as group:
        scale_at = [builder.gep(s, [group.index]) for s in row_scales]
        group_shift = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        with cgutils.for_range(builder, per_group) as inner:
            block = builder.add(builder.mul(group.index, per_group), inner.index)
            start = builder.mul(block, ir.Constant(I64, BLOCK))
            x_hi = load(builder, x, builder.add(start, ir.Constant(I64, BLOCK // 2)), vec(I16))
            block_scale = at(builder, x_scale, block)
            if packed:  # the dots below are 16× the nibbles' dots
                x_lo = load(builder, x_mixed, builder.mul(block, ir.Constant(I64, BLOCK // 2)), vec(I16))
                block_scale = builder.fmul(block_scale, ir.Constant(F32, 1 / 16))
            else:
                x_lo = load(builder, x, start, vec(I16))
            xs = splat(builder, block_scale)
            if packed or unsigned:
                accumulate(builder, group_shift, at(builder, x_shift, block), FAST)
            ahead = builder.add(builder.mul(block, ir.Constant(I64, BLOCK // 2 if packed else BLOCK)),
                                ir.Constant(I64, PREFETCH_AHEAD))
            for i, row in enumerate(rows):
                prefetch(builder, row, ahead)
                lo, hi = _block_codes(builder, row, block, packed, unsigned)
                dot = builder.add(_pair_dot(builder, lo, x_lo), _pair_dot(builder, hi, x_hi))
                # not reassociated (no "fast"): the activations' scale is one multiply for all lanes, and
                # the row's scale, loaded here rather than once per group, a broadcast load into the FMA
                part = builder.fmul(builder.sitofp(dot, vec(F32, LANES)), xs, flags=CONTRACT)
                accumulate(builder, acc[i], builder.fmul(part, splat(builder, builder.load(scale_at[i])),
                                                         flags=CONTRACT))
        if packed or unsigned:
            group_offset = builder.fmul(builder.load(group_shift), ir.Constant(F32, offset), flags=FAST)
            for i in range(len(rows)):
                accumulate(builder, shift[i], builder.fmul(builder.load(scale_at[i]), group_offset, flags=FAST), FAST)
    return [builder.fsub(hsum(builder, builder.load(a)), builder.load(s), flags=FAST) for a, s in zip(acc, shift,
                                                                                                     strict=True)]


@intrinsic
def dot4_q8(typingctx, wa, wb, wc, wd, sa, sb, sc, sd, codes, int4_codes, scales, sums):
    """Rows wa..wd (one row's codes each, C-contiguous: int8 or uint8 int8 + 128 [groups, group], or uint8 int4
    nibbles [groups, blocks, 16]) with their scales sa..sd [groups] dotted with the quantized activations
    (`kernel_codes.quantize_activations`) → four float32. The codes' dtype picks the dots: int8 `kernel_vnni`'s,
    int16 the portable ones."""
    layouts = {types.int8: types.int32, types.int16: types.float32}  # codes' dtype → sums' (see the docs)
    if wa.dtype not in (types.int8, types.uint8) or layouts.get(codes.dtype) != sums.dtype:
        return None
    packed = wa.dtype == types.uint8 and wa.ndim == 3
    unsigned = wa.dtype == types.uint8 and not packed
    dots = vnni_dots if codes.dtype == types.int8 else _portable_dots
    signature = types.UniTuple(types.float32, 4)(wa, wb, wc, wd, sa, sb, sc, sd, codes, int4_codes, scales, sums)

    def codegen(context, builder, sig, args):
        arrays = [array_of(context, builder, t, v) for t, v in zip(sig.args, args, strict=True)]
        data = [a.data for a in arrays]
        blocks = builder.extract_value(arrays[10].shape, 0)
        groups = builder.extract_value(arrays[4].shape, 0)
        return context.make_tuple(builder, sig.return_type, dots(builder, data[:4], data[4:8], data[8:], blocks,
                                                                 groups, packed, unsigned))

    return signature, codegen


TOKENS = 4  # tokens per pass of `dot4x4_q8`


@intrinsic
def dot4x4_q8(typingctx, wa, wb, wc, wd, sa, sb, sc, sd, codes, int4_codes, scales, sums, tokens, out):
    """Rows wa..wd (C-contiguous: int8 codes [groups, group], or uint8 int4 nibbles [groups, blocks, 16]) with their
    scales sa..sd [groups] dotted with the quantized activations of four tokens: rows `tokens` [4] of the arrays
    `kernel_codes.token_activations` makes (codes int8 [T, n], the int4 operand int8 [T, 2n], scales [T, n / 32],
    sums int32 [T, n / 32]; VNNI layout only) → out [4 rows, 4 tokens], each value what `dot4_q8` gives for that
    row and token. A row's bytes are loaded once for the four."""
    arrays = (wa, wb, wc, wd, sa, sb, sc, sd, codes, int4_codes, scales, sums, tokens, out)
    packed = wa.dtype == types.uint8 and wa.ndim == 3
    if (not (wa.dtype == types.int8 or packed) or codes.dtype != types.int8 or int4_codes.dtype != types.int8
            or sums.dtype != types.int32 or any(a.layout != "C" for a in arrays)):
        return None
    signature = types.void(*arrays)

    def codegen(context, builder, sig, args):
        arrays = [array_of(context, builder, t, v) for t, v in zip(sig.args, args, strict=True)]
        data = [a.data for a in arrays]
        n = builder.extract_value(arrays[8].shape, 1)
        n2 = builder.extract_value(arrays[9].shape, 1)
        blocks = builder.extract_value(arrays[10].shape, 1)
        groups = builder.extract_value(arrays[4].shape, 0)
        per_token = []
        for t in range(TOKENS):
            token = at(builder, data[12], ir.Constant(I64, t))
            per_token.append((builder.gep(data[8], [builder.mul(token, n)]),
                              builder.gep(data[9], [builder.mul(token, n2)]),
                              builder.gep(data[10], [builder.mul(token, blocks)]),
                              builder.gep(data[11], [builder.mul(token, blocks)])))
        dots = vnni_token_dots(builder, data[:4], data[4:8], per_token, blocks, groups, packed)
        for i, row in enumerate(dots):
            for t, value in enumerate(row):
                builder.store(value, builder.gep(data[13], [ir.Constant(I64, TOKENS * i + t)]))
        return context.get_dummy_value()

    return signature, codegen
