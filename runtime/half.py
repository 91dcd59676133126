"""float16 in the kernels: the elements of a float16 KV cache, held as their 16 bits (uint16).

numba has no float16 type on the CPU, so a float16 array reaches a kernel as uint16 and these two functions
convert one element: LLVM's own `fpext` / `fptrunc` between half and float, which vectorize (x86's F16C
`vcvtph2ps` / `vcvtps2ph`, aarch64's `fcvtl` / `fcvtn`). Rounding is to nearest, ties to even, as numpy's
`astype(np.float16)`: a cache row written by a kernel holds the same bits as one numpy writes (tested). Beyond
65504 a value becomes infinity, as in numpy and llama.cpp's float16 cache.

`widen(x)` and `narrow(x, like)` take either kind of element, so one kernel source serves float32 and float16
caches (numba compiles one machine code for each). `to_float32` widens a whole array: the past rows the layer
graphs take in a prompt's passes (numpy's own float16 cast ran at 0.6 G elements/s here, ~4% of a 1,500-token
prompt's time).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .kernel_codes import KERNEL_OPTIONS


@intrinsic
def _half_to_float(typingctx, bits):
    """The float32 value of the float16 whose bits are the uint16 `bits`."""
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _float_to_half(typingctx, x):
    """The bits (uint16) of the float32 `x` rounded to float16."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def widen(x):
    """A cache element as float32: a float32 as it is, float16 bits (uint16) converted."""


@overload(widen, jit_options=KERNEL_OPTIONS, inline="always")
def _widen(x):
    if x == types.uint16:
        return lambda x: _half_to_float(x)
    return lambda x: x


def narrow(x, like):
    """The float32 `x` as an element of the array `like`: float16 bits for a uint16 array, else x."""


@overload(narrow, jit_options=KERNEL_OPTIONS, inline="always")
def _narrow(x, like):
    if like.dtype == types.uint16:
        return lambda x, like: _float_to_half(x)
    return lambda x, like: x


@njit(cache=True, **KERNEL_OPTIONS)
def to_float32(bits):
    """float32 [shape] of the float16 bits [shape] (a C-contiguous uint16 array)."""
    flat = bits.reshape(bits.size)
    out = np.empty(bits.size, dtype=np.float32)
    for i in range(flat.shape[0]):
        out[i] = _half_to_float(flat[i])
    return out.reshape(bits.shape)
