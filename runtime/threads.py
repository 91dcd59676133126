"""Process-wide thread settings: the numba kernels' pool and the BLAS library's (one each per process).

`Model.load` calls `use_threads`; a program that loads models with different thread counts gets
the last one for every model's numba kernels and BLAS calls (onnxruntime's threads are per model).
"""

from __future__ import annotations

import os

import numba
from threadpoolctl import threadpool_limits


def use_threads(threads: int) -> None:
    """Run numba kernels and BLAS (numpy's prefill matrix products) on `threads` threads. numba uses the
    OpenMP layer with sleeping (not spinning) workers, unless the user chose one (NUMBA_THREADING_LAYER).
    BLAS would otherwise start a thread per core whatever `threads` says (measured: prefill 5x slower
    with the other core busy)."""
    threadpool_limits(limits=threads, user_api="blas")
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # OpenMP has the cheapest fork/join (~9 µs on 2 threads, workqueue ~50 µs), but its spinning
        # workers collapse when onnxruntime shares the cores: they must sleep (OMP_WAIT_POLICY=PASSIVE,
        # read when the OpenMP runtime starts, so set before the first parallel kernel runs).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        numba.config.THREADING_LAYER = "omp"
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
