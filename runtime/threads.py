"""Process-wide thread settings: the numba kernels' pool and the BLAS library's (one each per process).

`Model.load` calls `use_threads`; a program that loads models with different thread counts gets
the last one for every model's numba kernels and BLAS calls (onnxruntime's threads are per model).
"""

from __future__ import annotations

import os

import numba
from threadpoolctl import threadpool_limits

SPIN_BEFORE_SLEEP = {"GOMP_SPINCOUNT": "5000", "KMP_BLOCKTIME": "1"}  # GNU / Intel OpenMP runtimes


def use_threads(threads: int) -> None:
    """Run numba kernels and BLAS (numpy's prefill matrix products) on `threads` threads. numba uses the
    OpenMP layer, unless the user chose one (NUMBA_THREADING_LAYER), whose idle workers spin briefly and
    then sleep. BLAS would otherwise start a thread per core whatever `threads` says (measured: prefill
    5x slower with the other core busy)."""
    threadpool_limits(limits=threads, user_api="blas")
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # OpenMP has the cheapest fork/join (~9 µs on 2 threads, workqueue ~50 µs). Its workers must not
        # spin long: onnxruntime runs the prefill graphs on the same cores (granite-1b-shape, 2 threads:
        # default spinning 18 tok/s prefill, sleeping at once 71 tok/s but decode 20.8 ms, spinning
        # 5000 rounds first 68 tok/s and 17.0 ms). Read when the OpenMP runtime starts: set before the
        # first parallel kernel runs.
        for name, value in SPIN_BEFORE_SLEEP.items():
            os.environ.setdefault(name, value)
        numba.config.THREADING_LAYER = "omp"
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ValueError:  # no OpenMP layer: its library is the system's libgomp (absent from minimal installs)
        if "NUMBA_THREADING_LAYER" in os.environ:
            raise
        numba.config.THREADING_LAYER = "workqueue"  # numba's own, always there
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
