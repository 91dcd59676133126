"""This machine's memory read bandwidth, measured the way a decode step reads weights."""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

from .. import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)

BUFFER_BYTES = 1 << 30  # far larger than any last-level cache
BLOCK = 1 << 16  # float32 elements per parallel block


@njit(cache=True, fastmath=True, parallel=True)
def _blocked_sum(buf):
    blocks = buf.shape[0] // BLOCK
    partial = np.zeros(blocks, dtype=np.float32)
    for b in prange(blocks):
        block = buf[b * BLOCK:(b + 1) * BLOCK]  # a view: the loop below starts at 0 and vectorises
        acc = np.float32(0.0)
        for j in range(block.shape[0]):
            acc += block[j]  # fastmath splits this into independent vector lanes
        partial[b] = acc
    return partial.sum()


class BandwidthProbe:
    """Reads of one buffer of `nbytes`, allocated once, with `threads` threads: `sample()` is one read's GB/s."""

    def __init__(self, threads: int, nbytes: int = BUFFER_BYTES):
        self.threads = threads
        self.buf = np.ones(nbytes // 4, dtype=np.float32)
        self.sample()  # compiles and faults the buffer in outside any timing

    def sample(self) -> float:
        """GB/s of one read of the buffer."""
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            start = time.perf_counter()
            _blocked_sum(self.buf)
            return self.buf.nbytes / (time.perf_counter() - start) / 1e9
        finally:
            numba.set_num_threads(previous)


def read_bandwidth(threads: int, nbytes: int = BUFFER_BYTES, repeat: int = 5) -> float:
    """Best-of-`repeat` GB/s of a blocked, vectorised read with `threads` threads."""
    probe = BandwidthProbe(threads, nbytes)
    return max(probe.sample() for _ in range(repeat))
