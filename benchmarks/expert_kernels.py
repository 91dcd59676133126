"""Expert GEMV kernels at one thread: GB/s of weight bytes (codes + scales) read, against the read bandwidth.

    NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/expert_kernels.py [--repeat 7] [--megabytes 256]

For each expert-sized matrix shape (1024x4096 and 4096x1024: OLMoE's gate/up and down) and each layout
(int8 per channel, int4 groups of 32 and of 128), enough matrices to stay out of the caches are multiplied with
one activation vector by the runtime's row dots (`kernel_codes.rows_dot4`, four rows a pass; the loop of
`runtime/tools/row_prefetch_probe.py`) with float32
activations and with activations quantized to int8 blocks of 32. The matrices start on a page, as experts do
in experts.bin. The candidates run interleaved, `repeat` rounds, beside the read-bandwidth probe
(`runtime.tools.bandwidth`); medians are printed (the machine may be shared: compare columns of one run, not
runs). From the caches instead: e.g. `--megabytes 0 --shapes 256x1024,256x4096 --passes 20` (two matrices
of each, 128 KB-2 MB, each multiplied 20 times a call).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moedge.runtime.kernels import INT8_ACTIVATIONS
from moedge.runtime.tools.bandwidth import read_bandwidth
from moedge.runtime.tools.row_prefetch_probe import LAYOUTS, gemv, matrices

SHAPES = "1024x4096,4096x1024"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--megabytes", type=int, default=256, help="codes per layout and shape")
    parser.add_argument("--shapes", default=SHAPES, help="matrices, rows x inputs, comma-separated")
    parser.add_argument("--passes", type=int, default=1, help="multiplications of each matrix per call")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs, seconds = {}, {}
    for rows, cols in (map(int, shape.split("x")) for shape in args.shapes.split(",")):
        x = rng.standard_normal(cols).astype(np.float32)
        for layout in LAYOUTS:
            codes, scales = matrices(layout, rows, cols, args.megabytes, rng)
            out = np.empty(codes.shape[:2], np.float32)
            for name, quantized in (("float32 activations", None), ("int8 activations", INT8_ACTIVATIONS)):
                gemv(codes[:1], scales[:1], x, quantized, out[:1], 1)  # compile outside the timing
                runs[(rows, cols, layout, name)] = (codes, scales, x, quantized, out)
    bandwidth = []
    for _ in range(args.repeat):
        bandwidth.append(read_bandwidth(1, repeat=1))
        for key, (codes, scales, x, quantized, out) in runs.items():
            start = time.perf_counter()
            gemv(codes, scales, x, quantized, out, args.passes)
            seconds.setdefault(key, []).append(time.perf_counter() - start)
    probe = float(np.median(bandwidth))
    print(f"read bandwidth (1 thread, median of {args.repeat}): {probe:.1f} GB/s")
    print("| matrix | layout | activations | GB/s (median) | of the read bandwidth |")
    print("|---|---|---|---|---|")
    for (rows, cols, layout, name), (codes, scales, *_) in runs.items():
        median = float(np.median(seconds[(rows, cols, layout, name)]))
        rate = args.passes * (codes.nbytes + scales.nbytes) / median / 1e9
        print(f"| {rows}x{cols} | {layout} | {name} | {rate:.1f} | {rate / probe:.0%} |")


if __name__ == "__main__":
    main()
