"""File maps on 2 MiB pages: the weights a decode step streams, with fewer TLB misses and page walks.

On Linux with transparent huge pages for files (the page cache holding large folios: ext4, xfs; not tmpfs unless
its `shmem_enabled` allows), MADV_HUGEPAGE makes a fault on the map read the whole 2 MiB block of the file
around it and map it with one entry. Measured here, the bench models' experts mapped so decoded 3.5-7.7% faster
on average than on 4 KiB pages (page cache dropped before each run; docs/performance-history.md, session 7);
their dense weights, read by faults with readahead, were on 2 MiB mappings already. Pages the page cache already
holds in base-size folios stay mapped that way until they leave it.
"""

from __future__ import annotations

import mmap

HUGE_PAGE = 2 << 20
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14 (Python 3.12 names it)


def map_on_huge_pages(region: mmap.mmap, start: int = 0, end: int | None = None) -> bool:
    """Ask for 2 MiB pages over the whole 2 MiB blocks of [start, end) of a file map (default: all of it);
    whether the kernel took the advice (it does nothing where it cannot)."""
    end = len(region) if end is None else end
    first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end - end % HUGE_PAGE
    if last <= first or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        region.madvise(mmap.MADV_HUGEPAGE, first, last - first)
    except OSError:  # no transparent huge pages in this kernel
        return False
    return True


def read_blocks(region: mmap.mmap, start: int, length: int) -> bool:
    """Have the page cache read the 2 MiB blocks of a map on huge pages that [start, start + length) touches
    (MADV_WILLNEED would read base-size pages, which the map's faults then keep); whether it could (not before
    Linux 5.14)."""
    first = start - start % HUGE_PAGE
    try:
        region.madvise(MADV_POPULATE_READ, first, min(start + length, len(region)) - first)
    except OSError:
        return False
    return True
