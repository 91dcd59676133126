"""Small LLVM IR helpers shared by the row-dot intrinsics (`kernel_q8`, `kernel_vnni`)."""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

from .numba_cache import ROW_PREFETCH

BLOCK = 32  # activations per block (and per int4 packing block)
I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
LANES = 8  # float (and i32) accumulator lanes per row
FAST = ("reassoc", "nsz", "contract")  # not "fast": its no-NaN promise would let a NaN vanish
CONTRACT = ("contract",)


def vec(t: ir.Type, n: int = 2 * LANES) -> ir.VectorType:
    """<n x t>."""
    return ir.VectorType(t, n)


def const(value: ir.Value, n: int = LANES, t: ir.Type = F32) -> ir.Constant:
    """<n x t> with every lane `value`."""
    return ir.Constant(vec(t, n), [value] * n)


def load(builder: ir.IRBuilder, base: ir.Value, index: ir.Value, vector: ir.VectorType) -> ir.Value:
    """`vector` from base[index] on, with no alignment assumed."""
    return builder.load(builder.bitcast(builder.gep(base, [index]), vector.as_pointer()), align=1)


def at(builder: ir.IRBuilder, base: ir.Value, index: ir.Value) -> ir.Value:
    """base[index]."""
    return builder.load(builder.gep(base, [index]))


def splat(builder: ir.IRBuilder, value: ir.Value, n: int = LANES) -> ir.Value:
    """<n x value>."""
    one = builder.insert_element(ir.Constant(vec(value.type, n), ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(vec(I32, n), [0] * n))


def hsum(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """The sum of a float vector's lanes."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi, flags=FAST)
    return builder.extract_element(v, ir.Constant(I32, 0))


def accumulate(builder: ir.IRBuilder, slot: ir.Value, value: ir.Value, flags=CONTRACT) -> None:
    """*slot += value (an fmul feeding it fuses into an FMA)."""
    builder.store(builder.fadd(builder.load(slot), value, flags=flags), slot)


def zeros(builder: ir.IRBuilder, count: int, n: int = LANES) -> list[ir.Value]:
    """`count` float accumulators of n lanes, set to 0 where this is called."""
    return [cgutils.alloca_once_value(builder, const(0.0, n)) for _ in range(count)]


def array_of(context, builder, array_type, value):
    """A numba array argument's struct (its .data, .shape)."""
    return cgutils.create_struct_proxy(array_type)(context, builder, value=value)


# How far ahead (bytes) the row dots ask for a row's memory: per machine (`row_prefetch`). Without it a core that
# computes between its loads streamed the rows at ~20 GB/s on the VM of sessions 1-9; 256-512 bytes ahead, 25-26
# GB/s inside a decode step (granite's experts) and 31-33 in a long matrix; 768 bytes or more fell back to ~20.
PREFETCH_AHEAD = ROW_PREFETCH.int8


def prefetch(builder: ir.IRBuilder, base: ir.Value, index: ir.Value) -> None:
    """Ask for the cache line of base[index] (a hint: no fault, no effect on results)."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, I32, I32, I32]),
                                        "llvm.prefetch.p0")
    address = builder.bitcast(builder.gep(base, [index]), i8p)
    builder.call(fn, [address, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])

