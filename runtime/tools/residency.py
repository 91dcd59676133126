"""Which pages of a memory mapping are resident in RAM (Linux `mincore`)."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(address: int, length: int) -> np.ndarray:
    """A bool per page of [address, address + length): is it in RAM now?"""
    pages = -(-length // mmap.PAGESIZE)
    vec = np.zeros(pages, dtype=np.uint8)
    if _libc.mincore(address, length, vec.ctypes.data) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return (vec & 1).astype(bool)
