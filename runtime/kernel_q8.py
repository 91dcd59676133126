"""Four weight rows dotted with int8-quantized activations, in integer arithmetic, as portable LLVM IR.

The activations come in blocks of 32 (`quant.activations`: codes in [-127, 127] held as int16, one float32
scale per block). A row's codes are int8 (32 bytes a block), uint8 holding int8 + 128 (the dense linears'
MatMulNBits codes) or int4 nibbles (16 bytes a block, `kernel_codes`). Per block and row the codes are widened
to 16-bit lanes, multiplied with the activations' codes and summed in adjacent pairs into eight 32-bit lanes,
which are converted to float and added into eight float lanes with the block's two scales: no horizontal sum
until the row ends
(llama.cpp's `ggml_vec_dot_q4_0_q8_0` works the same way). An int4 block's 16 bytes b = lo + 16·hi are
not split in two: 16·Σ(lo·x_j + hi·x_j+16) = Σ lo·(16·x_j − x_j+16) + Σ b·x_j+16, so one mask and the
activations' `mixed` codes (16·x_j − x_j+16, made once per token) replace a shift per row and block.
Seven vector operations per row and block (measured: fewer operations, not wider ones, is what counts).

The IR is generic (vectors of i8/i16/i32/float, shuffles, sext/zext): LLVM lowers the
product-then-pair-sum pattern to `vpmaddwd` (and fuses the add into `vpdpwssd` with AVX512-VNNI) on
x86 and to widening multiply-adds on aarch64; nothing here names a target's instruction or assumes its
vector width or alignment. numba's own loops could not do this: a block's dot, written as a loop, ends
in a horizontal sum per block, which measured slower than the float kernels.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

BLOCK = 32  # activations per block (and per int4 packing block)
I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
LANES = 8  # float (and i32) accumulator lanes per row
FAST = ("reassoc", "nsz", "contract")  # not "fast": its no-NaN promise would let a NaN vanish
CONTRACT = ("contract",)
_EVEN = ir.Constant(ir.VectorType(I32, LANES), list(range(0, 2 * LANES, 2)))
_ODD = ir.Constant(ir.VectorType(I32, LANES), list(range(1, 2 * LANES, 2)))


def _vec(t: ir.Type, n: int = 2 * LANES) -> ir.VectorType:
    return ir.VectorType(t, n)


def _load(builder: ir.IRBuilder, base: ir.Value, index: ir.Value, vector: ir.VectorType) -> ir.Value:
    """`vector` from base[index] on, with no alignment assumed."""
    return builder.load(builder.bitcast(builder.gep(base, [index]), vector.as_pointer()), align=1)


def _splat(builder: ir.IRBuilder, value: ir.Value, n: int = LANES) -> ir.Value:
    one = builder.insert_element(ir.Constant(_vec(value.type, n), ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(_vec(I32, n), [0] * n))


def _pair_dot(builder: ir.IRBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
    """<16 x i16> · <16 x i16> → <8 x i32>: 32-bit products, adjacent pairs summed (the `vpmaddwd` pattern)."""
    p = builder.mul(builder.sext(a, _vec(I32)), builder.sext(b, _vec(I32)))
    return builder.add(builder.shuffle_vector(p, p, _EVEN), builder.shuffle_vector(p, p, _ODD))


def _hsum(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi, flags=FAST)
    return builder.extract_element(v, ir.Constant(I32, 0))


def _block_codes(builder: ir.IRBuilder, row: ir.Value, block: ir.Value, packed: bool,
                 unsigned: bool) -> tuple[ir.Value, ir.Value]:
    """A row's 32 codes of `block` as two <16 x i16>: inputs 0-15 and 16-31 (`unsigned`: + 128 left in); int4:
    the low nibbles and the whole bytes (see the module doc; nibbles + 8 left in)."""
    if packed:  # byte j: input j in the low nibble, input j + 16 in the high one
        wide = builder.zext(_load(builder, row, builder.mul(block, ir.Constant(I64, BLOCK // 2)), _vec(I8)), _vec(I16))
        return builder.and_(wide, ir.Constant(_vec(I16), [15] * 2 * LANES)), wide
    start = builder.mul(block, ir.Constant(I64, BLOCK))
    widen = builder.zext if unsigned else builder.sext
    return tuple(widen(_load(builder, row, builder.add(start, ir.Constant(I64, half)), _vec(I8)), _vec(I16))
                 for half in (0, BLOCK // 2))


def _array(context, builder, array_type, value):
    return cgutils.create_struct_proxy(array_type)(context, builder, value=value)


@intrinsic
def dot4_q8(typingctx, wa, wb, wc, wd, sa, sb, sc, sd, codes, mixed, scales, shifts):
    """Rows wa..wd (one row's codes each, C-contiguous: int8 or uint8 int8 + 128 [groups, group], or uint8 int4
    nibbles [groups, blocks, 16]) with their scales sa..sd [groups] dotted with the quantized activations
    (`kernel_codes.quantize_activations`: `codes` int16 [n], `mixed` int16 [n / 2], `scales` and `shifts`
    float32 [n / 32]) → four float32."""
    if wa.dtype not in (types.int8, types.uint8) or codes.dtype != types.int16:
        return None
    packed = wa.dtype == types.uint8 and wa.ndim == 3
    unsigned = wa.dtype == types.uint8 and not packed
    offset = 1.0 if packed else 16.0  # `shifts` is 8·Σ codes·scale: 8 the nibbles' offset, 128 = 16·8 the bytes'
    signature = types.UniTuple(types.float32, 4)(wa, wb, wc, wd, sa, sb, sc, sd, codes, mixed, scales, shifts)

    def codegen(context, builder, sig, args):
        arrays = [_array(context, builder, t, v) for t, v in zip(sig.args, args, strict=True)]
        data = [a.data for a in arrays]
        rows, row_scales, (x, x_mixed, x_scale, x_shift) = data[:4], data[4:8], data[8:]
        blocks = builder.extract_value(arrays[10].shape, 0)
        groups = builder.extract_value(arrays[4].shape, 0)
        per_group = builder.sdiv(blocks, groups)
        acc = [cgutils.alloca_once_value(builder, ir.Constant(_vec(F32, LANES), [0.0] * LANES)) for _ in rows]
        shift = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in rows]
        with cgutils.for_range(builder, groups) as group:
            scale_at = [builder.gep(s, [group.index]) for s in row_scales]
            group_shift = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
            with cgutils.for_range(builder, per_group) as inner:
                block = builder.add(builder.mul(group.index, per_group), inner.index)
                start = builder.mul(block, ir.Constant(I64, BLOCK))
                x_hi = _load(builder, x, builder.add(start, ir.Constant(I64, BLOCK // 2)), _vec(I16))
                block_scale = builder.load(builder.gep(x_scale, [block]))
                if packed:  # the dots below are 16× the nibbles' dots
                    x_lo = _load(builder, x_mixed, builder.mul(block, ir.Constant(I64, BLOCK // 2)), _vec(I16))
                    block_scale = builder.fmul(block_scale, ir.Constant(F32, 1 / 16))
                else:
                    x_lo = _load(builder, x, start, _vec(I16))
                xs = _splat(builder, block_scale)
                if packed or unsigned:
                    builder.store(builder.fadd(builder.load(group_shift), builder.load(builder.gep(x_shift, [block])),
                                               flags=FAST), group_shift)
                for i, row in enumerate(rows):
                    lo, hi = _block_codes(builder, row, block, packed, unsigned)
                    dot = builder.add(_pair_dot(builder, lo, x_lo), _pair_dot(builder, hi, x_hi))
                    # not reassociated (no "fast"): the activations' scale is one multiply for all lanes, and
                    # the row's scale, loaded here rather than once per group, a broadcast load into the FMA
                    part = builder.fmul(builder.sitofp(dot, _vec(F32, LANES)), xs, flags=CONTRACT)
                    total = builder.fmul(part, _splat(builder, builder.load(scale_at[i])), flags=CONTRACT)
                    builder.store(builder.fadd(builder.load(acc[i]), total, flags=CONTRACT), acc[i])
            if packed or unsigned:
                group_offset = builder.fmul(builder.load(group_shift), ir.Constant(F32, offset), flags=FAST)
                for i in range(len(rows)):
                    row_offset = builder.fmul(builder.load(scale_at[i]), group_offset, flags=FAST)
                    builder.store(builder.fadd(builder.load(shift[i]), row_offset, flags=FAST), shift[i])
        dots = [builder.fsub(_hsum(builder, builder.load(a)), builder.load(s), flags=FAST) for a, s in zip(acc, shift,
                                                                                                        strict=True)]
        return context.make_tuple(builder, sig.return_type, dots)

    return signature, codegen
