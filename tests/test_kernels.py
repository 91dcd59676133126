"""The numba expert kernels against a numpy reference on odd shapes, straight from the bytes: int8 per channel
and per group, int4, and a layer mixing int4 and int8 experts."""

import numpy as np
import pytest

from moedge.quant import SCHEMES, dequantize, quantize_int8
from moedge.runtime import kernels
from moedge.runtime.bundle import PAGE, ExpertLayout, ExpertsIndex, expert_span_layout, pack_expert_span
from moedge.runtime.expert_store import layer_bytes
from moedge.runtime.spec import ModelSpec, RoutingSpec

DIM, HID = 72, 40  # not multiples of the vector width
DIM4, HID4 = 96, 64  # int4 needs multiples of 32
CASES = {"per-channel": (["int8"] * 5, None), "group8": (["int8"] * 5, 8), "int4": (["int4"] * 5, 32),
         "mixed": (["int4", "int8", "int4", "int8", "int8"], 32)}


def pack(experts, schemes, group):
    """Experts laid out as in an experts file (header page, one span each, FORMAT.md), and the kernels' view."""
    hid, dim = experts[0][0].shape
    spec = ModelSpec(vocab_size=8, hidden_size=dim, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=2,
                     intermediate_size=0, layer_kinds=("moe",), expert_intermediate_size=hid,
                     routing=RoutingSpec(n_experts=len(experts), top_k=1))
    layouts = {s: ExpertLayout(*reversed(expert_span_layout(spec, group or 0, s))) for s in set(schemes)}
    spans, deq = [], []
    for matrices, scheme in zip(experts, schemes, strict=True):
        qs = {k: SCHEMES[scheme].quantize(w, group or 0) for k, w in zip(("gate", "up", "down"), matrices, strict=True)}
        layout = layouts[scheme]
        spans.append(pack_expert_span(layout.tensors, layout.span_bytes,
                                      {**{k: SCHEMES[scheme].pack(q.q) for k, q in qs.items()},
                                       **{f"{k}_scale": q.scale for k, q in qs.items()}}))
        deq.append([dequantize(q) for q in qs.values()])
    offsets = np.cumsum([PAGE] + [len(span) for span in spans[:-1]]).astype(np.int64)
    index = ExpertsIndex("experts.bin", group or 0, layouts, {0: tuple(schemes)}, {0: tuple(offsets)}, {})
    return layer_bytes(b"\0" * PAGE + b"".join(spans), index, offsets, 0, spec), deq


def expert_ref(x, gate, up, down):
    h = x @ gate.T
    return (h / (1 + np.exp(-h)) * (x @ up.T)) @ down.T


@pytest.fixture(params=list(CASES))
def packed(request):
    schemes, group = CASES[request.param]
    dim, hid = (DIM4, HID4) if group == 32 else (DIM, HID)
    rng = np.random.default_rng(0)
    experts = [(rng.standard_normal((hid, dim)), rng.standard_normal((hid, dim)), rng.standard_normal((dim, hid)))
               for _ in range(5)]
    return pack([[w.astype(np.float32) for w in e] for e in experts], schemes, group)


@pytest.mark.parametrize("kernel", [kernels.moe_decode, kernels.moe_decode_parallel], ids=["serial", "parallel"])
def test_moe_decode_matches_reference(packed, kernel):
    experts, deq = packed
    hid, dim = deq[0][0].shape
    x = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    chosen, w = np.array([3, 0, 4]), np.array([0.5, 0.3, 0.2], np.float32)
    out = np.empty(dim, np.float32)
    kernel(x, experts, chosen, w, np.empty((3, hid), np.float32), out)
    ref = sum(wj * expert_ref(x.astype(np.float64), *deq[e]) for e, wj in zip(chosen, w, strict=True))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 3, 17])
def test_expert_tokens_matches_reference(packed, n):
    experts, deq = packed
    hid, dim = deq[0][0].shape
    x = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)
    out = np.empty_like(x)
    for e in (1, 2):  # an int8 and an int4 expert in the mixed layer
        kernels.expert_tokens(x, experts, e, np.empty((n, hid), np.float32), out)
        ref = expert_ref(x.astype(np.float64), *deq[e])
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("part", [kernels.GATE, kernels.UP, kernels.DOWN])
def test_dequantize_matches_quant(packed, part):
    experts, deq = packed
    for e in (0, 1):
        out = np.empty(deq[e][part].shape, np.float32)
        kernels.dequantize(experts, e, part, out)
        np.testing.assert_array_equal(out, deq[e][part])


def test_kernels_take_nan_without_raising(packed):
    """numba's default error model raises ZeroDivisionError on NaN; ours gives NaN (the session reports it)."""
    experts, deq = packed
    hid, dim = deq[0][0].shape
    x = np.full(dim, np.nan, dtype=np.float32)
    out = np.empty(dim, np.float32)
    kernels.moe_decode(x, experts, np.array([0, 1]), np.ones(2, np.float32), np.empty((2, hid), np.float32), out)
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
