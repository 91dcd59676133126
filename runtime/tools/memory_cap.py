"""`moedge bench --memory-limit`: the measurement in a fresh process inside a memory cgroup, beside an
uncapped one, with the bundle's pages dropped from the page cache before each.

A child cgroup is made under this process's own memory cgroup (v1 `memory.limit_in_bytes`, or v2
`memory.max`); creating it needs write access there (root on these machines). The bundle's pages are
dropped with posix_fadvise(DONTNEED) on each of its files, so no page cached before is charged elsewhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup() -> tuple[Path, str]:
    """The folder of this process's memory cgroup and the name of its limit file."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/"), "memory.limit_in_bytes"
        if controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists():
            return CGROUP_ROOT / path.lstrip("/"), "memory.max"
    raise InputError("--memory-limit needs a memory cgroup, and this process is in none")


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A child memory cgroup limited to `limit_bytes`; yields its `cgroup.procs` file and removes it after."""
    parent, limit_file = _own_cgroup()
    folder = parent / f"moedge-bench-{os.getpid()}"
    try:
        folder.mkdir()
        (folder / limit_file).write_text(str(limit_bytes))
    except OSError as exc:
        with contextlib.suppress(OSError):
            folder.rmdir()
        raise InputError(f"--memory-limit: cannot create a memory cgroup under {parent} ({exc.strerror}); "
                         "it needs write access there (root, or a delegated cgroup)") from None
    try:
        yield folder / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()  # empty once the child has exited


def drop_cached_pages(bundle: Path) -> None:
    """Drop the bundle's files from the page cache (clean pages only; nothing else is touched)."""
    for path in bundle.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
