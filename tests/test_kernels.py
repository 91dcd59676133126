"""The numba expert kernels against a numpy reference on odd shapes, straight from the bytes: int8 per channel
and per group, int4, and a layer mixing int4 and int8 experts; with float32 activations, and with activations
quantized to int8 blocks of 32 against the same reference fed `quant.fake_quantize_activations`."""

import numpy as np
import pytest

from moedge.quant import SCHEMES, dequantize, fake_quantize_activations, quantize_activations, quantize_int8
from moedge.runtime import kernel_codes, kernels
from moedge.runtime.bundle import PAGE, ExpertLayout, ExpertsIndex, expert_span_layout, pack_expert_span
from moedge.runtime.expert_store import layer_bytes
from moedge.runtime.spec import ModelSpec, RoutingSpec

DIM, HID = 72, 40  # not multiples of the vector width
DIM4, HID4 = 96, 64  # int4 needs multiples of 32
# name: (schemes of the 5 experts, group, D, I); int8 activations need D, I and the group multiples of 32
CASES = {"per-channel": (["int8"] * 5, None, DIM, HID), "group8": (["int8"] * 5, 8, DIM, HID),
         "int4": (["int4"] * 5, 32, DIM4, HID4), "mixed": (["int4", "int8", "int4", "int8", "int8"], 32, DIM4, HID4),
         "per-channel-32": (["int8"] * 5, None, DIM4, HID4), "int4-g64": (["int4"] * 5, 64, 128, HID4),
         # int4 by steps of 4 blocks (`kernel_vnni`): 7 and 5 blocks (a step, then 2 and 1 left), groups of 2 blocks
         # (10 and 6), of 4 (12 and 8) and of 8 (the rows' scales once a group)
         "int4-steps": (["int4"] * 5, 32, 224, 160), "int4-g64-steps": (["int4"] * 5, 64, 320, 192),
         "int4-g128": (["int4"] * 5, 128, 384, 256), "int4-g256": (["int4"] * 5, 256, 512, 256)}
INT4_STEPS = ["int4-steps", "int4-g64-steps", "int4-g128", "int4-g256"]
QUANTIZABLE = ["int4", "mixed", "per-channel-32", "int4-g64", *INT4_STEPS]
INT8 = kernels.INT8_ACTIVATIONS


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


def expert_ref(x, gate, up, down, quantized=None):
    """One expert in float64; with `quantized`, its input and hidden vector go through int8 blocks first."""
    same = (lambda v: v) if quantized is None else (lambda v: fake_quantize_activations(v).astype(np.float64))
    x = same(x)
    h = x @ gate.T
    return same(h / (1 + np.exp(-h)) * (x @ up.T)) @ down.T


def make_packed(name):
    schemes, group, dim, hid = CASES[name]
    rng = np.random.default_rng(0)
    experts = [(rng.standard_normal((hid, dim)), rng.standard_normal((hid, dim)), rng.standard_normal((dim, hid)))
               for _ in range(5)]
    return pack([[w.astype(np.float32) for w in e] for e in experts], schemes, group)


@pytest.fixture(params=[name for name in CASES if name not in ("per-channel-32", "int4-g64", *INT4_STEPS)])
def packed(request):
    return make_packed(request.param)


@pytest.fixture(params=QUANTIZABLE)
def quantizable(request):
    return make_packed(request.param)


def check_decode(packed, kernel, quantized):
    experts, deq = packed
    hid, dim = deq[0][0].shape
    x = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    chosen, w = np.array([3, 0, 4]), np.array([0.5, 0.3, 0.2], np.float32)
    out = np.empty(dim, np.float32)
    kernel(x, experts, chosen, w, np.empty((3, hid), np.float32), out, quantized)
    ref = sum(wj * expert_ref(x, *deq[e], quantized) for e, wj in zip(chosen, w, strict=True))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def check_tokens(packed, n, quantized):
    experts, deq = packed
    hid, dim = deq[0][0].shape
    x = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)
    k = 2  # pairs p = token·k + slot: expert 1 (int8 in the mixed layer) in slot 0, expert 2 (int4) in slot 1
    out = np.full((n * k, dim), np.nan, np.float32)
    pairs = np.concatenate([np.arange(n) * k, np.arange(n) * k + 1])
    kernels.expert_pairs(x, experts, np.array([1, 2]), np.array([0, n, 2 * n]), pairs,
                         np.empty((n * k, hid), np.float32), out, quantized)
    for slot, e in enumerate((1, 2)):
        ref = expert_ref(x, *deq[e], quantized)
        np.testing.assert_allclose(out[slot::k], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


KERNELS = pytest.mark.parametrize("kernel", [kernels.moe_decode, kernels.moe_decode_parallel],
                                  ids=["serial", "parallel"])


@KERNELS
def test_moe_decode_matches_reference(packed, kernel):
    check_decode(packed, kernel, None)


@KERNELS
def test_moe_decode_int8_activations_matches_reference(quantizable, kernel):
    check_decode(quantizable, kernel, INT8)


@pytest.mark.parametrize("quantized", [None, INT8], ids=["float", "int8"])
def test_moe_decode_in_pieces_equals_one_call(quantized):
    """Stopped before any expert (whose bytes are still being read) and gone on from there, `moe_decode_from`
    gives `moe_decode`'s values exactly."""
    experts, deq = make_packed("mixed")
    hid, dim = deq[0][0].shape
    x = np.random.default_rng(3).standard_normal(dim).astype(np.float32)
    chosen, w = np.array([3, 0, 4, 1]), np.array([0.4, 0.3, 0.2, 0.1], np.float32)
    hidden = np.empty((4, hid), np.float32)
    whole = np.empty(dim, np.float32)
    kernels.moe_decode(x, experts, chosen, w, hidden, whole, quantized)
    for cuts in ([], [1], [2], [1, 3], [1, 2, 3]):
        out = np.full(dim, np.nan, np.float32)
        first = 0
        for stop in [*cuts, 4]:
            kernels.moe_decode_from(x, experts, chosen[:stop], w[:stop], hidden, out, quantized, first)
            first = stop
        np.testing.assert_array_equal(out, whole)


@pytest.mark.parametrize("n", [1, 3, 17])
def test_expert_pairs_matches_reference(packed, n):
    check_tokens(packed, n, None)


@pytest.mark.parametrize("n", [1, 3, 9])  # 9: two passes of four tokens (`kernels._expert_tile`) and one alone
def test_expert_pairs_int8_activations_matches_reference(quantizable, n):
    check_tokens(quantizable, n, INT8)


@pytest.mark.parametrize("name", ["per-channel-32", "mixed", "int4", *INT4_STEPS])
def test_expert_pairs_four_at_a_time_equal_decode(name):
    """Tokens taken four at a time (int8 and int4 rows: each row read once for the four) give the one-token
    decode kernel's values exactly, for every token of the passes and the one left over."""
    experts, deq = make_packed(name)
    hid, dim = deq[1][0].shape
    x = np.random.default_rng(5).standard_normal((9, dim)).astype(np.float32)
    out = np.full((9, dim), np.nan, np.float32)
    kernels.expert_pairs(x, experts, np.array([1]), np.array([0, 9]), np.arange(9)[::-1].copy(),
                         np.empty((9, hid), np.float32), out, INT8)
    for t in range(9):
        one = np.empty(dim, np.float32)
        kernels.moe_decode(x[t], experts, np.array([1]), np.ones(1, np.float32), np.empty((1, hid), np.float32), one,
                           INT8)
        np.testing.assert_array_equal(out[t], one, err_msg=f"token {t}")


@pytest.mark.parametrize("scale", [1.0, 1e-30, 3e4])
def test_kernel_quantizes_activations_like_the_reference(scale):
    x = (np.random.default_rng(4).standard_normal(8 * 32) * scale).astype(np.float32)
    x[32:64] = 0  # a block of zeros: scale 0, codes 0
    codes, scales = quantize_activations(x)
    got_codes, _, got_scales, _ = kernel_codes.quantize_activations(x)  # the rest: test_row_dots
    np.testing.assert_array_equal(got_codes, codes.ravel())
    np.testing.assert_array_equal(got_scales, scales)
    assert np.abs(codes).max() == 127 and np.abs(fake_quantize_activations(x) - x).max() <= scales.max() / 2


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
    kernels.moe_decode(x, experts, np.array([0, 1]), np.ones(2, np.float32), np.empty((2, hid), np.float32), out, None)
    assert np.isnan(out).all()


def test_int8_activations_carry_nan(quantizable):
    experts, deq = quantizable
    hid, dim = deq[0][0].shape
    x = np.random.default_rng(5).standard_normal(dim).astype(np.float32)
    x[3] = np.nan  # one block's scale is NaN: every output depends on it
    out = np.empty(dim, np.float32)
    kernels.moe_decode(x, experts, np.array([0, 1]), np.ones(2, np.float32), np.empty((2, hid), np.float32), out, INT8)
    assert np.isnan(out).all()


@pytest.mark.parametrize(("group", "quantized"), [(None, None), (8, None), (None, kernels.INT8_ACTIVATIONS),
                                                 (32, kernels.INT8_ACTIVATIONS)])
@pytest.mark.parametrize("tokens", [1, 5])
def test_norm_linear_matches_reference(group, quantized, tokens):
    """The LM head; with `quantized`, against the reference fed the normalized rows' int8 block round trip."""
    rng = np.random.default_rng(3)
    dim = DIM if quantized is None else DIM4  # int8 blocks: a multiple of 32
    w = rng.standard_normal((301, dim)).astype(np.float32)
    norm = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    x = rng.standard_normal((tokens, dim)).astype(np.float32)
    q = quantize_int8(w, group)
    out = np.empty((tokens, 301), np.float32)
    kernels.norm_linear(x, norm, np.float32(1e-6), q.q, q.scale, out, quantized)
    xn = (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * norm).astype(np.float32)
    ref = (xn if quantized is None else fake_quantize_activations(xn)) @ dequantize(q).T.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
