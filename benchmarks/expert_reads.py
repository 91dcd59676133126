"""How fast expert-sized spans come from storage: pread into one buffer vs the mapping's MADV_WILLNEED + touch.

    python benchmarks/expert_reads.py BUNDLE [--span-mb 1.5] [--count 150] [--repeat 3]

An explicit expert cache would read experts with pread into preallocated slots; the store maps the file and
asks for an expert's span with MADV_WILLNEED, then the kernels fault its pages in. Both read the same random
page-aligned spans of the bundle's experts file, its page cache dropped before each (posix_fadvise; run it
with no other process mapping the bundle). One thread, like a decode step's on-demand reads.
"""

import argparse
import mmap
import os
import time
from pathlib import Path

import numpy as np


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def pread_rate(path: Path, offsets: list[int], span: int) -> float:
    """GB/s reading each span with pread into one reused buffer."""
    _drop(path)
    fd = os.open(path, os.O_RDONLY)
    buffer = memoryview(bytearray(span))
    try:
        start = time.perf_counter()
        for offset in offsets:
            os.preadv(fd, [buffer], offset)
        return len(offsets) * span / (time.perf_counter() - start) / 1e9
    finally:
        os.close(fd)


def willneed_rate(path: Path, offsets: list[int], span: int) -> float:
    """GB/s asking for each span with MADV_WILLNEED on a MADV_RANDOM mapping, then touching every page."""
    _drop(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        mapping.madvise(mmap.MADV_RANDOM)
        pages = np.frombuffer(mapping, dtype=np.uint8)
        start = time.perf_counter()
        for offset in offsets:
            mapping.madvise(mmap.MADV_WILLNEED, offset, span)
            int(pages[offset:offset + span:mmap.PAGESIZE].sum())
        rate = len(offsets) * span / (time.perf_counter() - start) / 1e9
        del pages
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--span-mb", type=float, default=1.5)
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = args.bundle / "experts.bin"
    span = int(args.span_mb * 2**20) // mmap.PAGESIZE * mmap.PAGESIZE
    pages = (path.stat().st_size - span) // mmap.PAGESIZE
    for seed in range(args.repeat):
        offsets = (np.random.default_rng(seed).integers(0, pages, args.count) * mmap.PAGESIZE).tolist()
        print(f"run {seed}: pread {pread_rate(path, offsets, span):.2f} GB/s, "
              f"MADV_WILLNEED + touch {willneed_rate(path, offsets, span):.2f} GB/s")


if __name__ == "__main__":
    main()
