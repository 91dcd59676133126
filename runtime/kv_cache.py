"""The KV cache of one sequence: preallocated for the whole context, written in place, in float32 or float16.

float16 halves what a cache holds and what each decode step reads of it (attention reads every cached row of
every layer per token): the default beside quantized linears (`default_dtype`). Its elements are kept as
their 16 bits (uint16), the form numba's kernels take (`half`); the layer graphs get float32 copies.
"""

from __future__ import annotations

import mmap

import numpy as np

from . import half
from .errors import InputError
from .spec import ModelSpec

KV_DTYPES = {"float32": np.float32, "float16": np.uint16}  # a dtype's name -> what the cache's arrays hold


def default_dtype(activations: str, dense_linears: str) -> str:
    """float16 when the dense linears are quantized and take int8 activations (their inputs' rounding, ~1e-2,
    dwarfs float16's ~5e-4), float32 for float32 linears or float activations (the exact reference)."""
    return "float16" if activations == "int8" and dense_linears != "float32" else "float32"


def token_bytes(spec: ModelSpec, dtype: str) -> int:
    """Bytes of keys and values one position holds, over every layer, in a cache of `dtype`."""
    return 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * np.dtype(KV_DTYPES[dtype]).itemsize


def _zero_pages(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeros [shape] of `dtype` on fresh anonymous pages of the base size. numpy asks for 2 MB pages for arrays this
    large (transparent huge pages in "madvise" mode), so the first row written in each layer would hold 2 MB:
    measured, a granite-1b-shape session held 196 MB of cache after a 128-token prompt instead of 12."""
    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape))
    pages = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype=dtype).reshape(shape)


class KVCache:
    """Keys and values [layers, max_seq_len, kv_heads, head_dim] of `dtype` ("float32" or "float16", held as
    uint16 bits), allocated once.

    A step `reserve`s its rows, reads `past(i)` (views of the filled prefix; of a float16 cache, float32 copies
    for the layer graphs: one-token steps read it in place), `write`s its new rows after them, and `commit`s
    once every layer has written: only then do they count as filled. The allocation costs no memory until rows
    are written (the OS maps zero pages on first write): `held_bytes` is what the rows written so far (or
    reserved) hold.
    """

    def __init__(self, spec: ModelSpec, dtype: str = "float32"):
        if dtype not in KV_DTYPES:
            raise InputError(f"the KV cache's dtype must be one of {', '.join(KV_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        shape = (spec.n_layers, spec.max_seq_len, spec.n_kv_heads, spec.head_dim)
        try:
            self.k = _zero_pages(shape, KV_DTYPES[dtype])
            self.v = _zero_pages(shape, KV_DTYPES[dtype])
        except (MemoryError, OSError):
            raise InputError(f"the {dtype} KV cache for the model's context of {spec.max_seq_len} tokens needs "
                             f"{token_bytes(spec, dtype) * spec.max_seq_len / 1e9:.1f} GB, more than this machine "
                             "can allocate") from None
        self.length = 0  # filled rows
        self.high_water = 0  # rows ever written or reserved: their pages stay held after a reset or rewind

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    @property
    def held_bytes(self) -> int:
        """Bytes of keys and values the rows written (or reserved) so far hold."""
        return self.high_water * 2 * self.k[:, 0].nbytes

    def reserve(self, count: int) -> None:
        """Count the `count` rows a step is about to write in `held_bytes` (before they take memory)."""
        self.high_water = max(self.high_water, self.length + count)

    def past(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The filled rows of `layer`: keys, values [P, K, Hd] float32 (views of a float32 cache, copies of a
        float16 one's)."""
        k, v = self.k[layer, :self.length], self.v[layer, :self.length]
        if self.dtype == "float32":
            return k, v
        return half.to_float32(k), half.to_float32(v)

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Put a step's new rows [T, K, Hd] (float32) of `layer` after the filled ones (rounded to a float16
        cache's precision)."""
        end = self.length + k.shape[0]
        if self.dtype == "float16":
            k, v = k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16)
        self.k[layer, self.length:end] = k
        self.v[layer, self.length:end] = v

    def commit(self, count: int) -> None:
        """Count the `count` rows every layer has written as filled."""
        self.length += count
