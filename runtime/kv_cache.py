"""The KV cache of one sequence: preallocated for the whole context, written in place."""

from __future__ import annotations

import mmap

import numpy as np

from .errors import InputError
from .spec import ModelSpec


def _zero_pages(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros [shape] on fresh anonymous pages of the base size. numpy asks for 2 MB pages for arrays this
    large (transparent huge pages in "madvise" mode), so the first row written in each layer would hold 2 MB:
    measured, a granite-1b-shape session held 196 MB of cache after a 128-token prompt instead of 12."""
    pages = mmap.mmap(-1, max(4 * int(np.prod(shape)), 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype=np.float32).reshape(shape)


class KVCache:
    """Keys and values [layers, max_seq_len, kv_heads, head_dim], allocated once.

    A step `reserve`s its rows, reads `past(i)` (views of the filled prefix, never copies), `write`s its new
    rows after them, and `commit`s once every layer has written: only then do they count as filled. The
    allocation costs no memory until rows are written (the OS maps zero pages on first write): `held_bytes`
    is what the rows written so far (or reserved) hold.
    """

    def __init__(self, spec: ModelSpec):
        shape = (spec.n_layers, spec.max_seq_len, spec.n_kv_heads, spec.head_dim)
        try:
            self.k = _zero_pages(shape)
            self.v = _zero_pages(shape)
        except (MemoryError, OSError):
            raise InputError(f"the KV cache for the model's context of {spec.max_seq_len} tokens needs "
                             f"{spec.kv_cache_bytes / 1e9:.1f} GB, more than this machine can allocate") from None
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
        """The filled rows of `layer`: keys, values [P, K, Hd]."""
        return self.k[layer, :self.length], self.v[layer, :self.length]

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Put a step's new rows [T, K, Hd] of `layer` after the filled ones."""
        end = self.length + k.shape[0]
        self.k[layer, self.length:end] = k
        self.v[layer, self.length:end] = v

    def commit(self, count: int) -> None:
        """Count the `count` rows every layer has written as filled."""
        self.length += count
