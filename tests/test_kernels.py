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
    deq = [[dequantize(quantize_int8(w, group)) for w in e] for e in experts]
    # int8 weights: element offsets are byte offsets; scales are float32 elements
    return np.frombuffer(buf, np.int8), np.frombuffer(buf, np.float32), bases, bases // 4, layouts[:3], \
        layouts[3:] // 4, deq


def expert_ref(x, gate, up, down):
    h = x @ gate.T
    return (h / (1 + np.exp(-h)) * (x @ up.T)) @ down.T


@pytest.fixture(params=[None, 8], ids=["per-channel", "group8"])
def packed(request):
    rng = np.random.default_rng(0)
    experts = [(rng.standard_normal((HID, DIM)), rng.standard_normal((HID, DIM)), rng.standard_normal((DIM, HID)))
               for _ in range(5)]
    group = request.param
    packed = pack([[w.astype(np.float32) for w in e] for e in experts], group)
    gd, gi = (group, group) if group else (DIM, HID)
    return (*packed, gd, gi)


@pytest.mark.parametrize("kernel", [kernels.moe_decode, kernels.moe_decode_parallel], ids=["serial", "parallel"])
def test_moe_decode_matches_reference(packed, kernel):
    wbuf, sbuf, wbases, sbases, wlay, slay, deq, gd, gi = packed
    x = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    chosen, w = np.array([3, 0, 4]), np.array([0.5, 0.3, 0.2], np.float32)
    out = np.empty(DIM, np.float32)
    kernel(x, wbuf, sbuf, wbases[chosen], sbases[chosen], w, wlay, slay, gd, gi,
                       np.empty((3, HID), np.float32), out)
    ref = sum(wj * expert_ref(x.astype(np.float64), *deq[e]) for e, wj in zip(chosen, w, strict=True))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 3, 17])
def test_expert_tokens_matches_reference(packed, n):
    wbuf, sbuf, wbases, sbases, wlay, slay, deq, gd, gi = packed
    x = np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)
    out = np.empty_like(x)
    kernels.expert_tokens(x, wbuf, sbuf, wbases[2], sbases[2], wlay, slay, gd, gi, np.empty((n, HID), np.float32),
                          out)
    ref = expert_ref(x.astype(np.float64), *deq[2])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_dequantize_rows_matches_quant(packed):
    wbuf, sbuf, wbases, sbases, wlay, slay, deq, gd, gi = packed
    out = np.empty((DIM, HID), np.float32)
    kernels.dequantize_rows(wbuf, sbuf, wbases[1] + wlay[2], sbases[1] + slay[2], DIM, HID, gi, out)
    np.testing.assert_array_equal(out, deq[1][2])


@pytest.mark.parametrize("group", [None, 8])
@pytest.mark.parametrize("tokens", [1, 5])
def test_norm_linear_matches_reference(group, tokens):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((301, DIM)).astype(np.float32)
    norm = rng.uniform(0.5, 1.5, DIM).astype(np.float32)
    x = rng.standard_normal((tokens, DIM)).astype(np.float32)
    q = quantize_int8(w, group)
    out = np.empty((tokens, 301), np.float32)
    kernels.norm_linear(x, norm, np.float32(1e-6), q.q, q.scale, out)
    xn = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * norm
    ref = xn @ dequantize(q).T.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
