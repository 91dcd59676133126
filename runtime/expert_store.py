"""Lazy access to the quantized experts in a read-only memory map, with usage counters.

Opening the store maps the file and reads no expert byte. Readahead is switched off
(MADV_RANDOM) so a page fault never pulls in a neighbouring expert; the first time an
expert is routed to, exactly its span is read with MADV_WILLNEED and (unless verification
is off) its checksum is checked before any kernel reads it. Without a memory
budget, residency is left to the OS page cache. With one, experts are
released (MADV_PAGEOUT; those whose layer comes round last first, `_release_order`) whenever the mapped
experts would exceed it; a released expert that is
routed to again is read again. `read_ahead` starts reading the experts a layer is guessed to route
to before it does (runtime/prefetch.py).
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

from ..quant import SCHEMES
from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .bundle import DTYPES, EXPERT_TENSORS, EXPERTS_HEADER, ExpertsIndex, check_experts_header
from .errors import BundleError
from .kernels import ExpertBytes
from .spec import ModelSpec
from .verify import check_expert

# Reclaim the pages, not only unmap them: unmapped but cached pages would be mapped back by the
# kernel's fault-around when a neighbouring expert faults. Linux 5.4+; Python 3.11 lacks the name.
MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)
# Spans are aligned to the format's 4 KiB; the kernel's pages may be larger (16 KiB on a Raspberry Pi 5 or
# Apple silicon, 64 KiB on some arm64 kernels), and madvise refuses a start inside a page (EINVAL).
PAGE_SIZE = mmap.PAGESIZE


def whole_pages(start: int, length: int, page: int) -> tuple[int, int]:
    """(start, length) of the byte range widened to start on a page boundary (madvise rounds the end up)."""
    first = start - start % page
    return first, start + length - first


@njit(cache=True)
def _count(hits, touched, mapped, verified, guessed, last_use, clock, ids):
    """Count uses of ids (one layer's rows). Returns the experts not mapped yet (to read), those not verified
    yet (to check), and how many of ids had been guessed for this layer (the guesses are then cleared)."""
    fresh = []
    unchecked = []
    right = 0
    for e in ids.ravel():
        hits[e] += 1
        touched[e] = True
        last_use[e] = clock
        right += guessed[e]
        if not mapped[e]:
            mapped[e] = True
            fresh.append(e)
        if not verified[e] and e not in unchecked:
            unchecked.append(e)
    guessed[:] = False
    return fresh, unchecked, right


@njit(cache=True)
def _guess(mapped, guessed, last_use, clock, ids):
    """Mark guessed experts; return those not mapped yet (to read ahead), now counted as mapped and recent."""
    fresh = []
    for e in ids.ravel():
        if not guessed[e]:
            guessed[e] = True
            if not mapped[e]:
                mapped[e] = True
                last_use[e] = clock
                fresh.append(e)
    return fresh


@njit(cache=True)
def _release_order(mapped, last_use, spans, budget, layer, n_experts, clock):
    """Flat indices ([layer, expert] flattened) of the mapped experts to release so that at most `budget` bytes
    of spans stay mapped, those whose next use is likely farthest first. A step visits the layers in order
    (`layer` was just routed, at `clock`), so an expert's recency is counted in its own layer's turns: the
    layers until its layer's next turn plus the routing steps since its last use (the same for every expert
    its layer chose last time). Among equals, the expert whose layer comes round last goes first; those routed
    at `clock` go last. (Least recently used across layers releases every expert before its layer comes round
    again once the budget is below one token's experts, and never hits; replayed on the bench models' and the
    trained sample's routing, this order hit as often or more than it at every budget.)"""
    n_layers = mapped.size // n_experts
    victims = []
    held = 0
    for i in range(mapped.size):
        held += spans[i] * mapped[i]
    while held > budget:
        best, best_key = -1, (False, 0, 0)
        for i in range(mapped.size):
            if not mapped[i]:
                continue
            turn = (i // n_experts - layer) % n_layers or n_layers  # layers until its layer's next visit
            key = (last_use[i] != clock, turn + clock - last_use[i], turn)
            if best < 0 or key > best_key:
                best, best_key = i, key
        mapped[best] = False
        victims.append(best)
        held -= spans[best]
    return victims


def layer_bytes(experts_map, index: ExpertsIndex, span_offsets: np.ndarray, layer: int, spec: ModelSpec) -> ExpertBytes:
    """The kernels' view of one layer's experts (`span_offsets`: [E] byte offset of each span)."""
    schemes = index.schemes[layer]
    wide = next((s for s in schemes if s != "int4"), "int4")  # int8 or float32 codes, one per element
    views = {s: np.frombuffer(experts_map, dtype=DTYPES[SCHEMES[s].code_dtype]) for s in {wide, "int4"}}
    offsets = np.zeros((2, len(EXPERT_TENSORS)), dtype=np.int64)  # [wide, int4] × tensors: bytes in a span
    for kind, s in enumerate((wide, "int4")):
        if s in index.layouts:
            offsets[kind] = [index.layouts[s].tensors[name].offset for name in EXPERT_TENSORS]
    group = index.group_size
    return ExpertBytes(weights=views[wide], packed=views["int4"] if "int4" in schemes else views[wide],
                       scales=np.frombuffer(experts_map, dtype=np.float32),
                       kinds=np.array([s == "int4" for s in schemes], dtype=np.int64),
                       weight_start=span_offsets, scale_start=span_offsets // 4,
                       weight_offset=offsets[:, :3], scale_offset=offsets[:, 3:] // 4,
                       group_hidden=group or spec.hidden_size, group_inner=group or spec.expert_intermediate_size)


class ExpertStore:
    """Views over the mapped experts file plus counters: hits, first touches and bytes first touched.

    Safe to share between threads: routing decisions are counted under a lock.
    """

    def __init__(self, experts_map: mmap.mmap, path: Path, index: ExpertsIndex, spec: ModelSpec,
                 budget_bytes: int | None = None, verify: bool = True, fd: int | None = None,
                 held_back: Callable[[], int] | None = None):
        """`budget_bytes` caps the mapped experts (None: no cap); `held_back` (if given) returns bytes to take off
        it before each release decision — the memory the KV caches have grown into since the budget was set —
        down to one layer's top-k experts."""
        n_layers, n_experts = spec.n_layers, spec.routing.n_experts
        self._map = experts_map
        self._map.madvise(mmap.MADV_RANDOM)
        check_experts_header(self._map[:EXPERTS_HEADER.size], path)  # faults in the header page only
        self.path = path
        self._fd = fd  # of the experts file, owned by the store: releases drop the pages it caches
        if fd is not None:
            weakref.finalize(self, os.close, fd)
        self.checksums = index.checksums if verify else None
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)  # checksums hash the span in place
        self.offsets = np.full((n_layers, n_experts), -1, dtype=np.int64)  # byte offset of each span
        self.spans = np.zeros((n_layers, n_experts), dtype=np.int64)  # its size (0 outside MoE layers)
        for layer, offsets in index.layers.items():
            self.offsets[layer] = offsets
            self.spans[layer] = [index.span_bytes(layer, e) for e in range(n_experts)]
        self.layers = {layer: layer_bytes(self._map, index, self.offsets[layer], layer, spec)
                       for layer in index.layers}
        self.hits = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.touched = np.zeros((n_layers, n_experts), dtype=bool)
        self.mapped = np.zeros((n_layers, n_experts), dtype=bool)  # read (or being read), not released since
        self.verified = np.zeros((n_layers, n_experts), dtype=bool)
        self._lock = threading.Lock()
        self.last_use = np.zeros((n_layers, n_experts), dtype=np.int64)
        self._clock = 0
        self.budget_bytes = budget_bytes
        self._held_back = held_back
        self.floor_bytes = int(self.spans.max(initial=0)) * spec.routing.top_k  # what one layer needs at once
        self.releases = 0
        self.fetches = 0  # experts read on demand because they were not mapped: first uses and uses after a release
        self.guessed = np.zeros((n_layers, n_experts), dtype=bool)  # read ahead for the layer's next routing
        self.guessed_layers: set[int] = set()
        self.read_aheads = 0  # experts read ahead because they were guessed and not mapped
        self.guesses_right = 0  # routed experts that had been guessed
        self.guesses_routed = 0  # routed experts in routings that had a guess

    @property
    def guess_recall(self) -> float | None:
        """Share of the routed experts that had been guessed (over the routings that had a guess)."""
        return self.guesses_right / self.guesses_routed if self.guesses_routed else None

    @property
    def first_touches(self) -> int:
        return int(self.touched.sum())

    @property
    def bytes_touched(self) -> int:
        return int(self.spans[self.touched].sum())

    @property
    def address(self) -> int:
        """Start address of the mapping (for residency checks with mincore)."""
        return self._bytes.ctypes.data

    @property
    def size(self) -> int:
        return self._bytes.nbytes

    def touch(self, layer: int, ids: np.ndarray) -> None:
        """Count a routing decision `ids` [T, k] of `layer`; read the experts that are not mapped; with a
        budget, release the least recently used others. An expert that fails its checksum raises
        `BundleError` (and is checked again if routed to again)."""
        with self._lock:
            self._clock += 1
            fresh, unchecked, right = _count(self.hits[layer], self.touched[layer], self.mapped[layer],
                                             self.verified[layer], self.guessed[layer], self.last_use[layer],
                                             self._clock, ids)
            if layer in self.guessed_layers:
                self.guesses_right += right
                self.guesses_routed += ids.size
                self.guessed_layers.discard(layer)
            for e in fresh:
                self._read(layer, e)
                self.fetches += 1
            if self.checksums is not None:
                for e in unchecked:
                    self._verify(layer, e)
            self._hold_budget(layer)

    def read_ahead(self, layer: int, ids: np.ndarray) -> None:
        """Start reading the experts `ids` [T, k] that `layer` is guessed to route to next (MADV_WILLNEED
        returns at once: the kernel reads them while this thread computes). They count as mapped, so the
        budget holds; their checksums are checked when they are routed to."""
        with self._lock:
            self._clock += 1
            self.guessed_layers.add(layer)
            for e in _guess(self.mapped[layer], self.guessed[layer], self.last_use[layer], self._clock, ids):
                self._read(layer, e)
                self.read_aheads += 1
            self._hold_budget(layer)

    def _read(self, layer: int, e: int) -> None:
        self._map.madvise(mmap.MADV_WILLNEED, *whole_pages(int(self.offsets[layer, e]), int(self.spans[layer, e]),
                                                           PAGE_SIZE))

    @property
    def current_budget(self) -> int | None:
        """The bytes of experts that may stay mapped now (None: no cap)."""
        if self.budget_bytes is None or self._held_back is None:
            return self.budget_bytes
        return max(self.budget_bytes - self._held_back(), self.floor_bytes)

    def _hold_budget(self, layer: int) -> None:
        """Release experts (`_release_order`, `layer` just routed or guessed) while the mapped ones exceed the
        budget."""
        budget = self.current_budget
        if budget is None:
            return
        for flat in _release_order(self.mapped.reshape(-1), self.last_use.reshape(-1), self.spans.reshape(-1),
                                   budget, layer, self.mapped.shape[1], self._clock):
            start, size = int(self.offsets.flat[flat]), int(self.spans.flat[flat])
            self._map.madvise(MADV_PAGEOUT, *whole_pages(start, size, PAGE_SIZE))  # the pages this mapping holds
            if self._fd is not None:  # and those read ahead but never used, which only the page cache holds
                os.posix_fadvise(self._fd, start, size, os.POSIX_FADV_DONTNEED)
            self.releases += 1

    def _verify(self, layer: int, e: int) -> None:
        start = int(self.offsets[layer, e])
        try:
            check_expert(self._bytes[start:start + self.spans[layer, e]], layer, e, self.checksums[layer][e],
                         self.path.name)
        except BundleError:
            self.mapped[layer, e] = False  # read and checked again if routed to again
            raise
        self.verified[layer, e] = True
