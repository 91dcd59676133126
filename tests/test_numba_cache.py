"""The kernels' cache folder is named by every source file that holds cached kernels, so that an edit to any of
them (a callee included: numba checks a cached function against its own file only) compiles afresh."""

import re
from pathlib import Path

from moedge.runtime import numba_cache

RUNTIME = Path(numba_cache.__file__).parent
CACHED_KERNEL = re.compile(r"^@njit\(.*cache=True", re.MULTILINE)


def test_every_file_with_cached_kernels_names_the_cache_folder():
    with_kernels = {path.relative_to(RUNTIME).as_posix() for path in RUNTIME.rglob("*.py")
                    if CACHED_KERNEL.search(path.read_text())}
    assert "dense_decode.py" in with_kernels  # the pattern finds them
    assert with_kernels <= set(numba_cache.KERNEL_SOURCES), with_kernels - set(numba_cache.KERNEL_SOURCES)
