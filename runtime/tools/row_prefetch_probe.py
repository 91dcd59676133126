"""GB/s at which the row dots stream expert-sized int8 and int4 matrices from memory, at the prefetch distances this
process compiles with (`runtime.row_prefetch`; a fresh process per distance, set by MOEDGE_ROW_PREFETCH).

    python -m moedge.runtime.tools.row_prefetch_probe [--megabytes 256] [--repeat 5]

prints one JSON line: {"int8": GB/s, "int4": GB/s, "checksum": ...}, the checksum a sum of the products (the
same at every distance: a prefetch is a hint). `benchmarks/expert_kernels.py` uses the same matrices and loop.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from numba import njit

from ...quant import pack_int4, quantize_int4, quantize_int8
from ..kernel_codes import activations, rows_dot4
from ..kernels import INT8_ACTIVATIONS

LAYOUTS = {"int8": None, "int4 g32": 32, "int4 g128": 128}  # layout → int4 group size
SHAPE = (1024, 512)  # granite-1b-shape's and olmoe-shape's gate/up experts


@njit(fastmath=True, error_model="numpy")
def gemv(codes, scales, x, quantized, out, passes):
    """out[m, rows] = matrix m (codes [m, rows, ...], scales [m, rows, groups]) · x, four rows a page apart per pass;
    `passes` times over the matrices, x quantized once."""
    x2 = activations(x, x.shape[0] // scales.shape[2], quantized)
    for _ in range(passes):
        for m in range(codes.shape[0]):
            w, s = codes[m], scales[m]
            q = w.shape[0] // 4
            for r in range(q):
                out[m, r], out[m, r + q], out[m, r + 2 * q], out[m, r + 3 * q] = rows_dot4(
                    w, s, r, w, s, r + q, w, s, r + 2 * q, w, s, r + 3 * q, x2)


def page_aligned(a: np.ndarray) -> np.ndarray:
    """A copy of a starting on a 4096-byte boundary (numpy's own start 16 bytes past one)."""
    buffer = np.empty(a.nbytes + 4096, np.uint8)
    start = -buffer.ctypes.data % 4096
    copy = buffer[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    copy[...] = a
    return copy


def matrices(layout: str, rows: int, cols: int, megabytes: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """As many [rows, cols] matrices as fill `megabytes` of codes (at least two), in the kernels' views, each
    starting on a page as experts do in experts.bin."""
    one = rng.standard_normal((rows, cols)).astype(np.float32)
    group = LAYOUTS[layout]
    if group is None:
        q = quantize_int8(one, None)
        codes, scales = q.q.reshape(rows, 1, cols), q.scale.reshape(rows, 1)
    else:
        q = quantize_int4(one, group)
        codes, scales = pack_int4(q.q).reshape(rows, cols // group, group // 32, 16), q.scale
    count = max(2, (megabytes << 20) // codes.nbytes)
    return page_aligned(np.stack([codes] * count)), page_aligned(np.stack([scales] * count))


def measure(megabytes: int = 256, repeat: int = 5) -> dict[str, float]:
    """Median GB/s (codes and scales) of int8 per-channel and int4 groups-of-128 rows on int8 activations, the two
    timed alternately, and a checksum of the products."""
    rng = np.random.default_rng(0)
    rows, cols = SHAPE
    x = rng.standard_normal(cols).astype(np.float32)
    runs = {}
    for kind, layout in (("int8", "int8"), ("int4", "int4 g128")):
        codes, scales = matrices(layout, rows, cols, megabytes, rng)
        out = np.empty(codes.shape[:2], np.float32)
        gemv(codes[:1], scales[:1], x, INT8_ACTIVATIONS, out[:1], 1)  # compiles outside the timing
        runs[kind] = (codes, scales, out, [])
    for _ in range(repeat):
        for codes, scales, out, seconds in runs.values():
            start = time.perf_counter()
            gemv(codes, scales, x, INT8_ACTIVATIONS, out, 1)
            seconds.append(time.perf_counter() - start)
    rates = {kind: (codes.nbytes + scales.nbytes) / float(np.median(seconds)) / 1e9
             for kind, (codes, scales, _, seconds) in runs.items()}
    rates["checksum"] = float(sum(np.float64(out[:2].sum()) for _, _, out, _ in runs.values()))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256, help="codes of each kind")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.megabytes, args.repeat)))


if __name__ == "__main__":
    main()
