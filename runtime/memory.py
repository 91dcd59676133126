"""How much memory this process may still use, and the expert budget that fits in it.

The figure is the smaller of what the process's memory cgroup still allows (v2 `memory.max` −
`memory.current`, v1 `memory.limit_in_bytes` − `memory.usage_in_bytes`) and the system's
MemAvailable. When a bundle's experts do not fit beside the dense weights a step reads and `RESERVE`,
`Model.load` caps the experts held in memory at what does (those whose layer comes round last released; dense
weights and the KV cache stay resident), and says so. Beyond the `RUNTIME_GROWTH` reserved for it, what the
runtime comes to hold after load — the sessions' KV caches, numba's code, retained scratch, as the process's
anonymous memory grows — comes off such a budget as it happens (`ExpertStore.current_budget`,
`Weights.held_bytes`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import NamedTuple

PAGE_SIZE = mmap.PAGESIZE
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2^63
# Kept beside the expert budget when it is set for the machine: what the runtime is expected to take after
# `Model.load` (`RUNTIME_GROWTH`: numba loading the kernels' machine code, 25-40 MB measured on the tiny test model
# and olmoe-shape; the KV caches; retained scratch) and headroom for what a step allocates and frees before the
# budget next looks (a prompt pass's scratch). Growth beyond `RUNTIME_GROWTH` is measured as it happens and taken
# off the budget (`anonymous_bytes`, `Weights.held_bytes`): olmoe-shape grew 63-75 MB, granite-1b-shape 92-102.
# Until 2026-11-30 (session 5) a fixed 128 MB stood for all of it (300 MB before the KV cache left transparent huge
# pages): olmoe-shape under 512 MiB then kept 250 MB of experts and left 30-75 MiB of the limit unused.
RUNTIME_GROWTH = 64 << 20
HEADROOM = 32 << 20
RESERVE = RUNTIME_GROWTH + HEADROOM


def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, or no process-wide symbol table to look it up in)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # TypeError: Windows' ctypes takes no None
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`; elsewhere nothing). A prompt's
    freed scratch otherwise stays resident in the heap (olmoe-shape: 24 MB after a 128-token prompt), where it
    counts against an expert budget that follows the process's memory. Under a cap (capped decode, 64 steps after a
    128-token prompt): granite-1b-shape under 1 GiB held 78 MB beside its experts instead of 93, kept 773 MB of
    experts instead of 756 and read 11.8 of them a token instead of 14.0; olmoe-shape under 512 MiB 53 instead of
    73, 296 MB instead of 284-286, four alternating rounds 36.4-38.5 ms a token instead of 37.3-43.8."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def anonymous_bytes(proc: Path = Path("/proc")) -> int:
    """The process's resident anonymous memory (heap, numba's machine code, KV caches), from statm; 0 where
    /proc has no statm."""
    try:
        fd = os.open(proc / "self" / "statm", os.O_RDONLY)  # os, not pathlib: 6 µs a call, once a layer
    except OSError:
        return 0
    try:
        fields = os.read(fd, 256).split()
    finally:
        os.close(fd)
    return (int(fields[1]) - int(fields[2])) * PAGE_SIZE


class Available(NamedTuple):
    """Bytes the process may still use, and where the figure comes from."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _cgroup_room(root: Path, proc: Path) -> Available | None:
    """What the memory cgroup still allows: (limit − usage), or None without a limit."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            folder, limit_file, usage_file = root / path.lstrip("/"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            folder, limit_file, usage_file = root / "memory" / path.lstrip("/"), "memory.limit_in_bytes", \
                "memory.usage_in_bytes"
        else:
            continue
        limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
        if limit is not None and limit < NO_LIMIT:
            return Available(max(limit - (usage or 0), 0), f"the memory cgroup's limit ({folder / limit_file})")
    return None


def available_memory(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> Available:
    """The bytes this process may still use: the smaller of its cgroup's room and MemAvailable."""
    found = Available(NO_LIMIT, "no limit found")
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = Available(int(line.split()[1]) * 1024, "MemAvailable")
    except OSError:
        pass
    room = _cgroup_room(root, proc)
    return room if room is not None and room.bytes < found.bytes else found


def automatic_budget(experts_bytes: int, resident_bytes: int, available: Available) -> int | None:
    """The expert budget (bytes) when the experts do not fit in what is available beside the resident
    dense weights and `RESERVE`; None when they fit."""
    room = available.bytes - resident_bytes - RESERVE
    return None if experts_bytes <= room else max(room, 0)
