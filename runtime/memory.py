"""How much memory this process may still use, and the expert budget that fits in it.

The figure is the smaller of what the process's memory cgroup still allows (v2 `memory.max` −
`memory.current`, v1 `memory.limit_in_bytes` − `memory.usage_in_bytes`) and the system's
MemAvailable. When a bundle's experts do not fit beside the dense weights a step reads and the runtime's
own memory, `Model.load` caps the mapped experts at what does (least recently used released; dense weights
and the KV cache stay resident), and says so. The KV cache is not reserved ahead: such a budget shrinks by
what the sessions' caches grow into (`ExpertStore.current_budget`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2^63
# What the runtime itself still takes after `Model.load`: numba loading the kernels' machine code, onnxruntime's
# sessions at work, a prompt pass's scratch (passes of `session.PREFILL_CHUNK` tokens), allocator slack. Measured
# 39-81 MB at one thread and 78-95 MB at two on the bench shapes (two sessions of 128 + 64 tokens, their KV rows
# counted apart: the budget follows them). Before the KV cache left transparent huge pages (2 MB per layer
# from its first row) this took 180-290 MB and 300 MB was reserved; under a 1 GiB cap on granite-1b-shape 64 MB
# let the page cache thrash then (19x the uncapped latency).
RESERVE = 128 << 20


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
