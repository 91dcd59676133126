"""How fast experts come from storage under a budget: the page cache (MADV_WILLNEED, faults, MADV_PAGEOUT) against
the store's slots (`runtime.expert_slots`: O_DIRECT reads by I/O threads into reused anonymous memory).

    python benchmarks/expert_reads.py BUNDLE [--held 160] [--count 1200] [--batch 4]

Both replay the same stream of expert-sized spans of the bundle's experts file in batches (a layer's misses),
keeping the last `--held` spans and releasing the oldest, from a dropped page cache (run it with no other process
mapping the bundle). Prints GB/s and the kernel (system) CPU time per 32 spans read.
"""

import argparse
import mmap
import os
import resource
import time
from pathlib import Path

import numpy as np

from moedge.runtime.expert_slots import ExpertSlots


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def page_cache(path: Path, stream: list[list[int]], span: int, held: int) -> list[int]:
    """The store's policy until 2026-11-30: the mapping's pages, read ahead and faulted in, released with
    MADV_PAGEOUT and posix_fadvise(DONTNEED). Returns the spans read, in order."""
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    mapping.madvise(mmap.MADV_RANDOM)
    pages = np.frombuffer(mapping, dtype=np.uint8)
    kept, read = [], []
    for batch in stream:
        fresh = [e for e in dict.fromkeys(batch) if e not in kept]
        for e in fresh:
            mapping.madvise(mmap.MADV_WILLNEED, e * span, span)
        for e in fresh:
            int(pages[e * span:(e + 1) * span:mmap.PAGESIZE].sum())  # fault every page in
        kept += fresh
        read += fresh
        while len(kept) > held:
            e = kept.pop(0)
            mapping.madvise(getattr(mmap, "MADV_PAGEOUT", 21), e * span, span)
            os.posix_fadvise(fd, e * span, span, os.POSIX_FADV_DONTNEED)
    del pages
    mapping.close()
    os.close(fd)
    return read


def slots(path: Path, stream: list[list[int]], span: int, held: int) -> list[int]:
    """The store's slots: each span read into a free slot by the I/O threads, waited for, its slot given back."""
    pool = ExpertSlots(os.open(path, os.O_RDONLY), path.name, held + max(map(len, stream)), span)
    kept, read = {}, []
    for batch in stream:
        fresh = [e for e in dict.fromkeys(batch) if e not in kept]
        for e in fresh:
            kept[e] = pool.fill(e * span, span)
        for e in fresh:
            pool.wait(kept[e])
        read += fresh
        while len(kept) > held:
            pool.free(kept.pop(next(iter(kept))))
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--span-mb", type=float, default=1.6)
    parser.add_argument("--held", type=int, default=160, help="spans kept (the budget)")
    parser.add_argument("--count", type=int, default=1200, help="spans asked for")
    parser.add_argument("--batch", type=int, default=4, help="spans asked for at once (a layer's misses)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    path = args.bundle / "experts.bin"
    span = int(args.span_mb * 2**20) // mmap.PAGESIZE * mmap.PAGESIZE
    n = path.stat().st_size // span
    for run in range(args.repeat):
        ids = np.random.default_rng(run).integers(0, n, args.count).tolist()
        stream = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
        for name, policy in (("page cache", page_cache), ("slots", slots)):
            _drop(path)
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            count = len(policy(path, stream, span, args.held))
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            print(f"run {run} {name:>10}: {count * span / seconds / 1e9:.2f} GB/s, "
                  f"{(after.ru_stime - before.ru_stime) / count * 32e3:.1f} ms of kernel time per 32 spans")


if __name__ == "__main__":
    main()
