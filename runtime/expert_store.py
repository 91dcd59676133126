"""Lazy access to int8 experts in a read-only memory map, with usage counters.

Opening the store maps the file and reads no expert byte. Readahead is switched off
(MADV_RANDOM) so a page fault never pulls in a neighbouring expert; the first time an
expert is routed to, exactly its span is prefetched with MADV_WILLNEED. Residency beyond
that is left to the OS page cache.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
from numba import njit

from .bundle import DTYPES, EXPERT_TENSORS, EXPERTS_HEADER, ExpertsIndex, check_experts_header


@njit(cache=True)
def _count(hits, touched, ids):
    """hits[e] += uses of e in ids; marks new experts touched and returns them."""
    fresh = []
    for e in ids.ravel():
        hits[e] += 1
        if not touched[e]:
            touched[e] = True
            fresh.append(e)
    return fresh


class ExpertStore:
    """Views over the experts file plus counters: hits, first touches and bytes first touched."""

    def __init__(self, path: str | Path, index: ExpertsIndex, n_layers: int, n_experts: int):
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._map.madvise(mmap.MADV_RANDOM)
        check_experts_header(self._map[:EXPERTS_HEADER.size], Path(path))  # faults in the header page only
        weight_dtype = DTYPES[index.tensors["gate"].dtype]
        self.wbuf = np.frombuffer(self._map, dtype=weight_dtype)  # weights, in their own dtype
        self.sbuf = np.frombuffer(self._map, dtype=np.float32)  # scales
        item = self.wbuf.itemsize
        self.span_bytes = index.span_bytes
        layout = np.array([index.tensors[name].offset for name in EXPERT_TENSORS], dtype=np.int64)
        self.wlay, self.slay = layout[:3] // item, layout[3:] // 4  # element offsets inside a span
        self.offsets = np.full((n_layers, n_experts), -1, dtype=np.int64)  # bytes
        for layer, offsets in index.layers.items():
            self.offsets[layer] = offsets
        self.woffsets, self.soffsets = self.offsets // item, self.offsets // 4
        self.hits = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.touched = np.zeros((n_layers, n_experts), dtype=bool)

    @property
    def first_touches(self) -> int:
        return int(self.touched.sum())

    @property
    def bytes_touched(self) -> int:
        return self.first_touches * self.span_bytes

    @property
    def address(self) -> int:
        """Start address of the mapping (for residency checks with mincore)."""
        return self.sbuf.ctypes.data

    @property
    def size(self) -> int:
        return self.sbuf.nbytes

    def touch(self, layer: int, ids: np.ndarray) -> None:
        """Count a routing decision `ids` [T, k] of `layer`; prefetch experts used for the first time."""
        for e in _count(self.hits[layer], self.touched[layer], ids):
            self._map.madvise(mmap.MADV_WILLNEED, int(self.offsets[layer, e]), self.span_bytes)
