"""The numba expert kernels against a numpy reference on odd shapes, straight from the bytes."""

import numpy as np
import pytest

from moedge.quant import dequantize, quantize_int8
from moedge.runtime import kernels

DIM, HID = 72, 40  # not multiples of the vector width


def pack(experts, group):
    """Lay experts out like the experts file: [gate|up|down|scales] per 4096-byte span."""
    spans, layouts = [], None
    for gate, up, down in experts:
        qs = [quantize_int8(w, group) for w in (gate, up, down)]
        parts = [q.q for q in qs] + [q.scale for q in qs]
        offsets, blob = [], b""
        for p in parts:
            blob += b"\0" * (-len(blob) % 64)
            offsets.append(len(blob))
            blob += np.ascontiguousarray(p).tobytes()
        spans.append(blob + b"\0" * (-len(blob) % 4096))
        layouts = np.array(offsets, np.int64)
    buf = b"\0" * 4096 + b"".join(spans)
    bases = np.array([4096 + sum(len(s) for s in spans[:i]) for i in range(len(spans))], np.int64)
    arr = np.frombuffer(buf, np.int8)
    return arr, np.frombuffer(buf, np.float32), bases, layouts, [[dequantize(q) for q in
                                                                   [quantize_int8(w, group) for w in e]]
                                                                  for e in experts]


def expert_ref(x, gate, up, down):
    h = x @ gate.T
    return (h / (1 + np.exp(-h)) * (x @ up.T)) @ down.T


@pytest.fixture(params=[None, 8], ids=["per-channel", "group8"])
def packed(request):
    rng = np.random.default_rng(0)
    experts = [(rng.standard_normal((HID, DIM)), rng.standard_normal((HID, DIM)), rng.standard_normal((DIM, HID)))
               for _ in range(5)]
    group = request.param
    qbuf, sbuf, bases, lay, deq = pack([[w.astype(np.float32) for w in e] for e in experts], group)
    gd, gi = (group, group) if group else (DIM, HID)
    return qbuf, sbuf, bases, lay, gd, gi, deq


def test_moe_decode_matches_reference(packed):
    qbuf, sbuf, bases, lay, gd, gi, deq = packed
    x = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    chosen, w = np.array([3, 0, 4]), np.array([0.5, 0.3, 0.2], np.float32)
    out = np.empty(DIM, np.float32)
    kernels.moe_decode(x, qbuf, sbuf, bases[chosen], w, lay, gd, gi, np.empty((3, HID), np.float32), out)
    ref = sum(wj * expert_ref(x.astype(np.float64), *deq[e]) for e, wj in zip(chosen, w, strict=True))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 3, 17])
def test_expert_tokens_matches_reference(packed, n):
    qbuf, sbuf, bases, lay, gd, gi, deq = packed
    x = np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)
    out = np.empty_like(x)
    kernels.expert_tokens(x, qbuf, sbuf, bases[2], lay, gd, gi, np.empty((n, HID), np.float32), out)
    ref = expert_ref(x.astype(np.float64), *deq[2])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_dequantize_rows_matches_quant(packed):
    qbuf, sbuf, bases, lay, gd, gi, deq = packed
    out = np.empty((DIM, HID), np.float32)
    kernels.dequantize_rows(qbuf, sbuf, bases[1] + lay[2], (bases[1] + lay[5]) // 4, DIM, HID, gi, out)
    np.testing.assert_array_equal(out, deq[1][2])
