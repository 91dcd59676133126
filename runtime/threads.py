"""Process-wide thread settings of the numba kernels (numba keeps one thread pool per process).

`Model.load` calls `use_threads`; a program that loads models with different thread counts gets
the last one for every model's numba kernels (onnxruntime's threads are per model).
"""

from __future__ import annotations

import os

import numba


def use_threads(threads: int) -> None:
    """Run numba kernels on `threads` threads, with the OpenMP layer and sleeping (not spinning) workers,
    unless the user chose a threading layer (NUMBA_THREADING_LAYER)."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # OpenMP has the cheapest fork/join (~9 µs on 2 threads, workqueue ~50 µs), but its spinning
        # workers collapse when onnxruntime shares the cores: they must sleep (OMP_WAIT_POLICY=PASSIVE,
        # read when the OpenMP runtime starts, so set before the first parallel kernel runs).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        numba.config.THREADING_LAYER = "omp"
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
