"""Where numba keeps the runtime's compiled kernels: one folder per version of their sources.

numba checks a cached function against its own source file only, not against the functions it
calls from other files. The kernels call across files (kernel_codes → kernels → dense_decode), so
an edit in one would leave another's machine code stale. Keeping the cache in a folder named by a
digest of every kernel source (and of the settings that choose between kernels or are compiled into
them: the row dots' prefetch distances, `row_prefetch`) closes that hole, and keeps it out of
site-packages, which may be read-only. The base folder is NUMBA_CACHE_DIR if set, else
$XDG_CACHE_HOME/moedge (~/.cache/moedge).
Every module with cached kernels imports this one before defining them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

from .row_prefetch import RowPrefetch, chosen

KERNEL_SOURCES = ("fast_exp.py", "half.py", "kernel_ir.py", "kernel_q8.py", "kernel_vnni.py", "kernel_codes.py",
                  "cache_lines.py", "kernels.py", "dense_decode.py", "decode_step.py", "routing.py", "expert_store.py",
                  "tools/bandwidth.py")
CHOICES = ("MOEDGE_PORTABLE_KERNELS",)  # environment variables that change the machine code (`kernel_vnni`)


def cache_base() -> Path:
    """The folder of the kernel caches and of this machine's kernel settings."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("NUMBA_CACHE_DIR") or user_cache / "moedge")


def kernel_cache_dir(prefetch: RowPrefetch | None = None) -> Path:
    """The cache folder of this version of the kernels, compiled with `prefetch` (default: `ROW_PREFETCH`)."""
    here = Path(__file__).parent
    sources = b"".join((here / name).read_bytes() for name in KERNEL_SOURCES)
    choices = "".join(f"{name}={os.environ.get(name, '')};" for name in CHOICES)
    choices += "row_prefetch={},{};".format(*(prefetch or ROW_PREFETCH))
    digest = hashlib.sha256(sources + choices.encode()).hexdigest()[:16]
    return cache_base() / f"kernels-{digest}"


ROW_PREFETCH = chosen(cache_base())  # what the row dots compile with (`kernel_ir.PREFETCH_AHEAD`, `kernel_vnni`)
numba.config.CACHE_DIR = str(kernel_cache_dir())
