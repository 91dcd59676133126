"""Lazy access to the quantized experts, with usage counters.

Opening the store maps the file and reads no expert byte. Without a memory budget the kernels read the
map: readahead is switched off (MADV_RANDOM) so a page fault never pulls in a neighbouring expert, the
first time an expert is routed to exactly its span is read with MADV_WILLNEED, and residency is left to
the OS page cache. Experts of `HUGE_PAGES_MIN_SPAN` or more are mapped on 2 MiB pages where the kernel can
(`huge_pages`): a first use then reads the 2 MiB blocks of the file its span touches. With a budget the
experts live in slots of anonymous memory (`expert_slots`): an expert routed to takes a slot and is read
into it, and when the slots are full the experts whose layer comes round last give theirs up
(`_release_order`); a released expert routed to again is read again. Either way (unless verification is off)
an expert's checksum is checked before any kernel reads it. `read_ahead` starts reading the experts a layer
is guessed to route to before it does (runtime/prefetch.py).
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

from ..quant import SCHEMES
from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .bundle import DTYPES, EXPERT_TENSORS, EXPERTS_HEADER, ExpertsIndex, check_experts_header
from .errors import BundleError
from .expert_slots import ALIGN, ExpertSlots
from .huge_pages import map_on_huge_pages, read_blocks
from .kernels import ExpertBytes
from .spec import ModelSpec
from .verify import check_expert

# Spans are aligned to the format's 4 KiB; the kernel's pages may be larger (16 KiB on a Raspberry Pi 5 or
# Apple silicon, 64 KiB on some arm64 kernels), and madvise refuses a start inside a page (EINVAL).
PAGE_SIZE = mmap.PAGESIZE
# Experts this large or larger are mapped on 2 MiB pages (`huge_pages`) without a budget: a first use then
# reads the 2 MiB blocks of the file its span touches, a neighbour's bytes too; smaller experts keep exactly
# their span on base-size pages.
HUGE_PAGES_MIN_SPAN = 1 << 20


def whole_pages(start: int, length: int, page: int) -> tuple[int, int]:
    """(start, length) of the byte range widened to start on a page boundary (madvise rounds the end up)."""
    first = start - start % page
    return first, start + length - first


@njit(cache=True)
def _count(hits, touched, guessed, last_use, clock, ids):
    """Count uses of ids (one layer's rows). Returns the distinct experts routed to and how many of ids had been
    guessed for this layer (the guesses are then cleared)."""
    routed = []
    right = 0
    for e in ids.ravel():
        hits[e] += 1
        touched[e] = True
        last_use[e] = clock
        right += guessed[e]
        if e not in routed:
            routed.append(e)
    guessed[:] = False
    return routed, right


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


def _read_only(buffer, dtype) -> np.ndarray:
    """`buffer` viewed as `dtype`, read-only whether or not the buffer is (the slots are written by reads, the
    kernels never write): one numba type, so slots and the map share the kernels' compiled code."""
    view = np.frombuffer(buffer, dtype=dtype)
    view.setflags(write=False)
    return view


def layer_bytes(experts_map, index: ExpertsIndex, span_offsets: np.ndarray, layer: int, spec: ModelSpec) -> ExpertBytes:
    """The kernels' view of one layer's experts (`span_offsets`: [E] byte offset of each span). Its arrays are
    chosen by the schemes of the whole bundle, not the layer's: every layer of a mixed bundle, all-int4 ones
    included, takes the mixed kernels (one numba type, so a step's layers run in one call: `decode_step`)."""
    schemes = index.schemes[layer]
    wide = next((s for s in index.layouts if s != "int4"), "int4")  # int8 or float32 codes, one per element
    views = {s: _read_only(experts_map, DTYPES[SCHEMES[s].code_dtype]) for s in {wide, "int4"}}
    offsets = np.zeros((2, len(EXPERT_TENSORS)), dtype=np.int64)  # [wide, int4] × tensors: bytes in a span
    for kind, s in enumerate((wide, "int4")):
        if s in index.layouts:
            offsets[kind] = [index.layouts[s].tensors[name].offset for name in EXPERT_TENSORS]
    group = index.group_size
    return ExpertBytes(weights=views[wide], packed=views["int4"] if "int4" in index.layouts else views[wide],
                       scales=_read_only(experts_map, np.float32),
                       kinds=np.array([s == "int4" for s in schemes], dtype=np.int64),
                       weight_start=span_offsets, scale_start=span_offsets // 4,
                       weight_offset=offsets[:, :3], scale_offset=offsets[:, 3:] // 4,
                       group_hidden=group or spec.hidden_size, group_inner=group or spec.expert_intermediate_size)


class ExpertStore:
    """The experts file's views for the kernels (`layers`), where the experts are held, and counters: hits, first
    touches and bytes first touched.

    Routing decisions are counted, and experts read and released, under a lock; under a budget, the experts of
    one step at a time are held and computed (`using`), so sessions may run on several threads.
    """

    def __init__(self, experts_map: mmap.mmap, path: Path, index: ExpertsIndex, spec: ModelSpec,
                 budget_bytes: int | None = None, verify: bool = True, fd: int | None = None,
                 held_back: Callable[[], int] | None = None):
        """`budget_bytes` caps the experts held (None: no cap); under one, they are read into slots through `fd`,
        the experts file's descriptor, which the slots then own. `held_back` (if given) returns bytes to take off
        the budget before each release decision — the memory the runtime has grown into since the budget was
        set — down to one layer's top-k experts."""
        n_layers, n_experts = spec.n_layers, spec.routing.n_experts
        self._map = experts_map
        self._map.madvise(mmap.MADV_RANDOM)
        check_experts_header(self._map[:EXPERTS_HEADER.size], path)  # faults in the header page only
        self.path = path
        self.file_bytes = len(experts_map)
        self.checksums = index.checksums if verify else None
        self.offsets = np.full((n_layers, n_experts), -1, dtype=np.int64)  # byte offset of each span in the file
        self.spans = np.zeros((n_layers, n_experts), dtype=np.int64)  # its size (0 outside MoE layers)
        for layer, offsets in index.layers.items():
            self.offsets[layer] = offsets
            self.spans[layer] = [index.span_bytes(layer, e) for e in range(n_experts)]
        self.top_k = spec.routing.top_k
        self.floor_bytes = int(self.spans.max(initial=0)) * self.top_k  # what one layer needs at once
        self.budget_bytes = budget_bytes
        self._held_back = held_back
        self._slots: ExpertSlots | None = None
        self._huge = False  # the map on 2 MiB pages
        if budget_bytes is None:
            held = self._map
            self._starts = self.offsets  # the kernels read each span where it is in the file
            self._charged = self.spans
            self._huge = int(self.spans.max(initial=0)) >= HUGE_PAGES_MIN_SPAN and map_on_huge_pages(self._map)
        else:
            if fd is None:
                raise ValueError("an expert budget needs the experts file's descriptor")
            slot = -(-int(self.spans.max()) // max(ALIGN, PAGE_SIZE)) * max(ALIGN, PAGE_SIZE)
            self._slots = ExpertSlots(fd, path.name, max(budget_bytes // slot, self.top_k), slot)
            held = self._slots.memory
            self._starts = np.zeros_like(self.offsets)  # byte offset of each expert's slot, while it has one
            self._charged = np.where(self.spans > 0, slot, 0)  # a slot each, whatever the span
        self._bytes = np.frombuffer(held, dtype=np.uint8)  # checksums hash the span where the kernels read it
        self.layers = {layer: layer_bytes(held, index, self._starts[layer], layer, spec) for layer in index.layers}
        self.hits = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.touched = np.zeros((n_layers, n_experts), dtype=bool)
        self.mapped = np.zeros((n_layers, n_experts), dtype=bool)  # held (or being read), not released since
        self.verified = np.zeros((n_layers, n_experts), dtype=bool)
        self._lock = threading.Lock()
        self._step = threading.RLock()  # `using`
        self.last_use = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.clock = 0  # counts routing decisions: `last_use` holds each expert's latest
        self.releases = 0
        self.fetches = 0  # experts read on demand because they were not held: first uses and uses after a release
        self.guessed = np.zeros((n_layers, n_experts), dtype=bool)  # read ahead for the layer's next routing
        self.guessed_layers: set[int] = set()
        self.read_aheads = 0  # experts read ahead because they were guessed and not held
        self.read_wait = 0.0  # seconds the kernels' thread waited for experts' reads to land
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
        """Start address of the memory the experts are held in (the map, or the slots under a budget), for
        residency checks."""
        return self._bytes.ctypes.data

    @property
    def size(self) -> int:
        """Bytes of the memory at `address`."""
        return self._bytes.nbytes

    @property
    def slot_bytes_held(self) -> int:
        """Bytes of anonymous memory the slots hold (0 without a budget)."""
        return 0 if self._slots is None else self._slots.resident_bytes

    @property
    def direct_reads(self) -> bool:
        """Whether experts are read into their slots past the page cache (O_DIRECT)."""
        return self._slots is not None and self._slots.direct

    @property
    def capacity(self) -> int | None:
        """How many experts may be held at once now (None: no cap)."""
        budget = self.current_budget
        return None if budget is None else self._slots_for(budget)

    def _slots_for(self, budget: int) -> int:
        """How many experts `budget` bytes hold (one layer's top-k at least)."""
        return max(budget // self._slots.slot_bytes, self.top_k)

    @property
    def current_budget(self) -> int | None:
        """The bytes of experts that may be held now (None: no cap)."""
        if self.budget_bytes is None or self._held_back is None:
            return self.budget_bytes
        return max(self.budget_bytes - self._held_back(), self.floor_bytes)

    def using(self) -> contextlib.AbstractContextManager:
        """Hold this around `hold` and the kernels that read what it held: under a budget, one thread at a time
        (another thread's `hold` or `read_ahead` could otherwise give the slots away mid-computation)."""
        return self._step if self._slots is not None else contextlib.nullcontext()

    def counting(self) -> contextlib.AbstractContextManager:
        """Hold this while a kernel counts routing decisions itself (`decode_step`: `hits`, `touched`, `last_use`,
        `clock`, as `touch` does)."""
        return self._lock

    def touch(self, layer: int, ids: np.ndarray) -> None:
        """Count a routing decision `ids` [T, k] of `layer`. Without a budget, also read the experts not read yet
        and check them; under one, `hold` does, for as many as fit at once."""
        with self._lock:
            self.clock += 1
            routed, right = _count(self.hits[layer], self.touched[layer], self.guessed[layer], self.last_use[layer],
                                   self.clock, ids)
            if layer in self.guessed_layers:
                self.guesses_right += right
                self.guesses_routed += ids.size
                self.guessed_layers.discard(layer)
            if self._slots is None:
                for e in routed:
                    if not self.mapped[layer, e]:
                        self.mapped[layer, e] = True
                        self._read_in(int(self.offsets[layer, e]), int(self.spans[layer, e]))
                        self.fetches += 1
                self._check(layer, routed)

    def _read_in(self, start: int, length: int) -> None:
        """Have the page cache read the span at `start` of the map (on 2 MiB pages: its blocks; where the kernel
        cannot read them so, the span as on base-size pages)."""
        if not (self._huge and read_blocks(self._map, start, length)):
            self._map.madvise(mmap.MADV_WILLNEED, *whole_pages(start, length, PAGE_SIZE))

    def hold(self, layer: int, experts: np.ndarray, wait: bool = True) -> None:
        """Under a budget, have `experts` (distinct ids of `layer`, at most `capacity`, routed to) held until the
        next `hold`: release others to make room and start reading those not held; with `wait`, wait for them and
        check them (else `ready` does, expert by expert). An expert that cannot be read or fails its checksum
        raises `BundleError` (and is read again if routed to again)."""
        if self._slots is None:
            return
        with self._lock:
            budget = self.current_budget
            need = self.mapped[layer, experts]
            self.mapped[layer, experts] = False  # not released to make room for themselves
            self._release(layer, budget - len(experts) * self._slots.slot_bytes)
            self.mapped[layer, experts] = True
            for e, held in zip(experts, need, strict=True):
                if not held:
                    self._fill(layer, int(e))
                    self.fetches += 1
            self._slots.shrink(self._slots_for(budget))
        if wait:
            for e in experts:
                self.ready(layer, int(e))

    def ready(self, layer: int, e: int, block: bool = True) -> bool:
        """Whether expert e of `layer` (held) has its bytes in place, checked; with `block`, wait until it has."""
        if self._slots is None:
            return True
        with self._lock:
            start = int(self._starts[layer, e])
            landed = self._slots.landed(start)
            if not (block or landed):
                return False
            began = time.perf_counter()
            try:
                self._slots.wait(start)
            except BundleError:
                self._give_back(layer, e)
                raise
            finally:
                if not landed:
                    self.read_wait += time.perf_counter() - began
            self._check(layer, (e,))
        return True

    def read_ahead(self, layer: int, ids: np.ndarray) -> None:
        """Start reading the experts `ids` [T, k] that `layer` is guessed to route to next, into slots (the reads
        run on I/O threads while this thread computes). They count as held, so the budget holds; `hold` waits
        for them and checks them when they are routed to."""
        with self.using(), self._lock:
            self.clock += 1
            self.guessed_layers.add(layer)
            fresh = _guess(self.mapped[layer], self.guessed[layer], self.last_use[layer], self.clock, ids)
            budget = self.current_budget
            self._release(layer, budget)
            for e in fresh:
                self._fill(layer, e)
                self.read_aheads += 1
            self._slots.shrink(self._slots_for(budget))

    def _fill(self, layer: int, e: int) -> None:
        start = self._slots.fill(int(self.offsets[layer, e]), int(self.spans[layer, e]))
        b = self.layers[layer]
        b.weight_start[e], b.scale_start[e] = start, start // 4

    def _give_back(self, layer: int, e: int) -> None:
        """Give up expert e's slot: it is read again if routed to again."""
        self._slots.free(int(self._starts[layer, e]))
        self.mapped[layer, e] = False

    def _release(self, layer: int, budget: int) -> None:
        """Release experts (`_release_order`, `layer` just routed or guessed) while those held exceed `budget`."""
        n_experts = self.mapped.shape[1]
        for flat in _release_order(self.mapped.reshape(-1), self.last_use.reshape(-1), self._charged.reshape(-1),
                                   max(budget, 0), layer, n_experts, self.clock):
            self._give_back(*divmod(int(flat), n_experts))
            self.releases += 1

    def _check(self, layer: int, experts) -> None:
        """Check the checksums of `experts` of `layer` not checked yet."""
        if self.checksums is None:
            return
        for e in experts:
            if not self.verified[layer, e]:
                self._verify(layer, int(e))

    def _verify(self, layer: int, e: int) -> None:
        start = int(self._starts[layer, e])
        try:
            check_expert(self._bytes[start:start + self.spans[layer, e]], layer, e, self.checksums[layer][e],
                         self.path.name)
        except BundleError:
            if self._slots is None:
                self.mapped[layer, e] = False  # read and checked again if routed to again
            else:
                self._give_back(layer, e)
            raise
        self.verified[layer, e] = True
