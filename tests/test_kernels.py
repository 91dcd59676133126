"""The numba expert kernels against a numpy reference on odd shapes, straight from the bytes."""

import numpy as np
import pytest

from moedge.quant import dequantize, quantize_int8
from moedge.runtime import kernels
from moedge.runtime.bundle import PAGE, ExpertsIndex, expert_span_layout, pack_expert_span
from moedge.runtime.expert_store import layer_bytes
from moedge.runtime.spec import ModelSpec, RoutingSpec

DIM, HID = 72, 40  # not multiples of the vector width


def pack(experts, group):
    """Experts laid out as in an experts file (header page, one span each, FORMAT.md), and the kernels' view."""
    spec = ModelSpec(vocab_size=8, hidden_size=DIM, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=2,
                     intermediate_size=0, layer_kinds=("moe",), expert_intermediate_size=HID,
                     routing=RoutingSpec(n_experts=len(experts), top_k=1))
    layout, span = expert_span_layout(spec, group or 0, "int8")
    spans, deq = [], []
    for matrices in experts:
        qs = dict(zip(("gate", "up", "down"), (quantize_int8(w, group) for w in matrices), strict=True))
        spans.append(pack_expert_span(layout, span, {**{k: q.q for k, q in qs.items()},
                                                     **{f"{k}_scale": q.scale for k, q in qs.items()}}))
        deq.append([dequantize(q) for q in qs.values()])
    offsets = np.array([PAGE + e * span for e in range(len(experts))], np.int64)
    index = ExpertsIndex("experts.bin", span, group or 0, layout, {0: tuple(offsets)}, {})
    return layer_bytes(b"\0" * PAGE + b"".join(spans), index, offsets, spec), deq


def expert_ref(x, gate, up, down):
    h = x @ gate.T
    return (h / (1 + np.exp(-h)) * (x @ up.T)) @ down.T


@pytest.fixture(params=[None, 8], ids=["per-channel", "group8"])
def packed(request):
    rng = np.random.default_rng(0)
    experts = [(rng.standard_normal((HID, DIM)), rng.standard_normal((HID, DIM)), rng.standard_normal((DIM, HID)))
               for _ in range(5)]
    return pack([[w.astype(np.float32) for w in e] for e in experts], request.param)


@pytest.mark.parametrize("kernel", [kernels.moe_decode, kernels.moe_decode_parallel], ids=["serial", "parallel"])
def test_moe_decode_matches_reference(packed, kernel):
    experts, deq = packed
    x = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    chosen, w = np.array([3, 0, 4]), np.array([0.5, 0.3, 0.2], np.float32)
    out = np.empty(DIM, np.float32)
    kernel(x, experts, chosen, w, np.empty((3, HID), np.float32), out)
    ref = sum(wj * expert_ref(x.astype(np.float64), *deq[e]) for e, wj in zip(chosen, w, strict=True))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 3, 17])
def test_expert_tokens_matches_reference(packed, n):
    experts, deq = packed
    x = np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)
    out = np.empty_like(x)
    kernels.expert_tokens(x, experts, 2, np.empty((n, HID), np.float32), out)
    ref = expert_ref(x.astype(np.float64), *deq[2])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("part", [kernels.GATE, kernels.UP, kernels.DOWN])
def test_dequantize_matches_quant(packed, part):
    experts, deq = packed
    out = np.empty(deq[1][part].shape, np.float32)
    kernels.dequantize(experts, 1, part, out)
    np.testing.assert_array_equal(out, deq[1][part])


def test_kernels_take_nan_without_raising(packed):
    """numba's default error model raises ZeroDivisionError on NaN; ours gives NaN (the session reports it)."""
    experts, _ = packed
    x = np.full(DIM, np.nan, dtype=np.float32)
    out = np.empty(DIM, np.float32)
    kernels.moe_decode(x, experts, np.array([0, 1]), np.ones(2, np.float32), np.empty((2, HID), np.float32), out)
    assert np.isnan(out).all()


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
