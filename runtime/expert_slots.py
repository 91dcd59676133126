"""Experts kept under a memory budget: slots of anonymous memory, filled by a few I/O threads.

Under a budget the store does not leave residency to the page cache. Each expert routed to (or guessed)
takes one of a fixed set of slots, and its span is read into the slot with `preadv` — O_DIRECT where the
file system allows it, so no page-cache copy is made, charged or reclaimed. Releasing an expert gives its
slot to the next one. `benchmarks/expert_reads.py` on olmoe-shape's experts (1.6 MB spans, 160 kept, this
VM's disk): the page cache (MADV_WILLNEED, faults, MADV_PAGEOUT) moved 0.95-1.05 GB/s and took 21-23 ms of
kernel time per 32 spans; the slots 1.43-1.46 GB/s and 6.3-6.8 ms.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import BundleError

IO_THREADS = 4  # reads in flight at once: 2 moved 1.4 GB/s, 4 1.3-1.8, 8 1.1 (olmoe-shape spans, this VM)
ALIGN = 4096  # O_DIRECT's alignment of offsets, lengths and buffers; experts.bin aligns spans to it


def direct_io(fd: int) -> bool:
    """Switch `fd` to O_DIRECT if its file system allows it (not tmpfs, for one); whether it did."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | flag)
    except OSError:
        return False
    return True


def _close(io: ThreadPoolExecutor, fd: int) -> None:
    io.shutdown(wait=True)
    os.close(fd)


class ExpertSlots:
    """`count` slots of `slot_bytes` each in one anonymous mapping, and the reads that fill them.

    `memory` is what the kernels view; a slot is taken with `fill` (which starts the read), its bytes are
    there after `wait`, and `free` gives it back. Free slots that still hold pages beyond what the budget
    allows are emptied with `shrink`. Not thread-safe: the store calls it under its lock.
    """

    def __init__(self, fd: int, name: str, count: int, slot_bytes: int):
        self.slot_bytes = slot_bytes
        # private anonymous memory: pages appear as slots are first filled (O_DIRECT into shared anonymous memory
        # moved 1.1 GB/s here, into private 1.4)
        self.memory = mmap.mmap(-1, count * slot_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._view = memoryview(self.memory)
        self._fd, self._name = fd, name
        self.direct = direct_io(fd)
        self.count = count
        self._filled = [0] * count  # bytes of each slot whose pages a read has written (until emptied)
        self._cold = list(range(count - 1, -1, -1))  # free slots without pages (never filled, or emptied)
        self._warm: list[int] = []  # free slots whose pages are still resident: taken first
        self._pending: dict[int, Future] = {}  # slot -> its read
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="moedge-expert-io")
        weakref.finalize(self, _close, self._io, fd)  # the slots own the descriptor

    @property
    def resident_bytes(self) -> int:
        """Bytes of the slots' memory that hold pages."""
        return sum(self._filled)

    @property
    def used(self) -> int:
        """Slots holding pages: taken or warm."""
        return self.count - len(self._cold)

    def fill(self, offset: int, length: int) -> int:
        """Take a slot and start reading `length` bytes at file `offset` into it; returns the slot's byte offset
        in `memory`."""
        slot = (self._warm or self._cold).pop()  # IndexError: the store released too few
        start = slot * self.slot_bytes
        size = -(-length // ALIGN) * ALIGN  # O_DIRECT reads whole blocks; the slot has room for them
        self._filled[slot] = max(self._filled[slot], -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._pending[slot] = self._io.submit(self._read, start, offset, size, length)
        return start

    def _read(self, start: int, offset: int, size: int, length: int) -> None:
        got = 0
        while got < length:  # a read may stop short; past the end of the file it returns 0
            n = os.preadv(self._fd, [self._view[start + got:start + size]], offset + got)
            if n == 0:
                raise BundleError(f"{self._name}: the file ends inside an expert at byte {offset + got}: it is "
                                  "truncated (export or copy the bundle again)")
            got += n

    def landed(self, start: int) -> bool:
        """Whether the read into the slot at byte `start` (if any) is over."""
        pending = self._pending.get(start // self.slot_bytes)
        return pending is None or pending.done()

    def wait(self, start: int) -> None:
        """Block until the read into the slot at byte `start` has landed (raises what the read raised)."""
        pending = self._pending.pop(start // self.slot_bytes, None)
        if pending is not None:
            try:
                pending.result()
            except OSError as exc:
                raise BundleError(f"{self._name}: cannot read an expert: {exc.strerror}") from None

    def free(self, start: int) -> None:
        """Give back the slot at byte `start` (after its read, if one is in flight, has landed)."""
        slot = start // self.slot_bytes
        pending = self._pending.pop(slot, None)
        if pending is not None:
            pending.exception()  # wait; a failed read into a slot given back does not matter
        self._warm.append(slot)

    def shrink(self, allowed: int) -> None:
        """Empty warm free slots (MADV_DONTNEED: their pages leave memory) until at most `allowed` slots hold
        pages."""
        while self.used > allowed and self._warm:
            slot = self._warm.pop()
            self.memory.madvise(mmap.MADV_DONTNEED, slot * self.slot_bytes, self.slot_bytes)
            self._filled[slot] = 0
            self._cold.append(slot)
