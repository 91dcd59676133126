"""Asking for a row of an array before a kernel reads it: the KV cache rows attention reads next.

Attention reads every cached row of a layer once per token, little work per row, on base-size pages (the KV
cache's: `kv_cache`), where the hardware prefetchers stop at each 4 KiB page. Measured on one core of the
session 11 VM, 24 layers of granite-1b-shape's float16 cache from memory: 1,024 cached rows 10.0-11.0 ms a token
→ 7.3-7.9 with each row asked for two rows (2 KiB) ahead; 128 rows 1.4-1.7 → 0.9-1.3. The kernels ask as many
rows ahead as cover the row dots' distance (`row_prefetch`), at least one: `rows_ahead`.
"""

from __future__ import annotations

from numba import njit, types
from numba.extending import intrinsic

from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .kernel_ir import I8, PREFETCH_AHEAD, array_of, prefetch

LINE = 64  # bytes per cache line


@intrinsic
def _prefetch_byte(typingctx, array, offset):
    """Ask for the cache line holding byte `offset` of `array`'s data (a hint: no fault, no effect on results)."""
    def codegen(context, builder, sig, args):
        data = builder.bitcast(array_of(context, builder, sig.args[0], args[0]).data, I8.as_pointer())
        prefetch(builder, data, args[1])
        return context.get_dummy_value()
    return types.none(array, types.intp), codegen


@njit(cache=True, error_model="numpy", inline="always")
def prefetch_row(array, i):
    """Ask for the cache lines of array[i] (`array` C-contiguous)."""
    step = array.strides[0]
    for offset in range(i * step, (i + 1) * step, LINE):
        _prefetch_byte(array, offset)


@njit(cache=True, error_model="numpy", inline="always")
def rows_ahead(array):
    """How many rows of `array` ahead of the one read to ask for: those the row dots' distance covers, at least one."""
    return max(1, -(-PREFETCH_AHEAD // array.strides[0]))
