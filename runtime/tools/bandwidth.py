"""This machine's memory read bandwidth, measured the way a decode step reads weights.

A decode step's row dots read four rows a quarter of a matrix apart per pass, and ask for each row's memory
ahead of where they read (`row_prefetch`). On some machines that moves more bytes a second than one plain
sequential read: on session 13's VM (one thread, the machine busy, the best of eight reads of 1 GiB each way)
one plain stream read 14.0 GB/s at best and four streams a quarter of a 256 KiB block apart 17.6, and
granite-1b-shape's int8 decode steps streamed faster than the plain read (ratio 0.83 to the roofline made from
it), which was then no bound. So the probe reads each way and takes the faster: one plain stream, and four
streams asking ahead as far as the int8 row dots do here.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

from .. import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from ..cache_lines import prefetch_row
from ..numba_cache import ROW_PREFETCH

BUFFER_BYTES = 1 << 30  # far larger than any last-level cache
BLOCK = 1 << 16  # float32 elements per parallel block (256 KiB: an expert matrix's size)
CHUNK = 256  # float32 elements a stream reads in turn (1 KiB)
ROW = 64  # float32 elements per request row (256 bytes)
WAYS = ((1, 0), (4, ROW_PREFETCH.int8))  # (streams, bytes asked for ahead): plain, as the int8 row dots


@njit(cache=True, fastmath=True, parallel=True)
def _blocked_sum(buf, streams, ahead):
    """The sum of buf's whole BLOCKs, each read as `streams` streams (its 1/streams parts, a CHUNK of each in
    turn), each ROW asked for `ahead` bytes (whole rows) before it is read when `ahead` > 0."""
    blocks = buf.shape[0] // BLOCK
    rows = buf[:blocks * BLOCK].reshape(blocks * BLOCK // ROW, ROW)
    span = BLOCK // streams  # elements per stream in a block
    skip = ahead // (4 * ROW)
    last = rows.shape[0] - 1
    partial = np.zeros(blocks, dtype=np.float32)
    for b in prange(blocks):
        acc = np.float32(0.0)
        for c in range(0, span, CHUNK):
            for s in range(streams):
                start = b * BLOCK + s * span + c
                if skip:
                    for r in range(CHUNK // ROW):
                        prefetch_row(rows, min(start // ROW + r + skip, last))
                chunk = buf[start:start + CHUNK]  # a view: the loop below starts at 0 and vectorises
                for j in range(CHUNK):
                    acc += chunk[j]  # fastmath splits this into independent vector lanes
        partial[b] = acc
    return partial.sum()


class BandwidthProbe:
    """Reads of `nbytes` with `threads` threads, each way of `WAYS` over a buffer of its own (allocated once: a way
    read right after another never finds the other's lines in a large last-level cache): `sample()` reads each
    once and returns the fastest's GB/s; `rates` holds each way's."""

    def __init__(self, threads: int, nbytes: int = BUFFER_BYTES):
        self.threads = threads
        self.buffers = {way: np.ones(nbytes // 4, dtype=np.float32) for way in WAYS}
        self.rates: dict[tuple[int, int], float] = {}
        self.sample()  # compiles and faults the buffers in outside any timing

    def _read(self, way: tuple[int, int]) -> float:
        buf = self.buffers[way]
        start = time.perf_counter()
        _blocked_sum(buf, *way)
        return buf.nbytes / (time.perf_counter() - start) / 1e9

    def sample(self) -> float:
        """GB/s of the fastest way of reading, each of `WAYS` read once."""
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            self.rates = {way: self._read(way) for way in self.buffers}
            return max(self.rates.values())
        finally:
            numba.set_num_threads(previous)


def way_name(way: tuple[int, int]) -> str:
    """'1 stream' or '4 streams, 1024 bytes ahead': how a way of `WAYS` reads."""
    streams, ahead = way
    return f"{streams} stream{'s' if streams > 1 else ''}" + (f", {ahead} bytes ahead" if ahead else "")


def read_bandwidths(threads: int, nbytes: int = BUFFER_BYTES, repeat: int = 5) -> dict[str, float]:
    """Best-of-`repeat` GB/s of each of `WAYS` (by `way_name`) with `threads` threads, the ways taking turns."""
    probe = BandwidthProbe(threads, nbytes)
    best: dict[str, float] = {}
    for _ in range(repeat):
        probe.sample()
        for way, rate in probe.rates.items():
            best[way_name(way)] = max(rate, best.get(way_name(way), 0.0))
    return best


def read_bandwidth(threads: int, nbytes: int = BUFFER_BYTES, repeat: int = 5) -> float:
    """Best-of-`repeat` GB/s of blocked, vectorised reads with `threads` threads: the fastest way's."""
    return max(read_bandwidths(threads, nbytes, repeat).values())
