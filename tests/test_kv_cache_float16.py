"""The float16 KV cache: its conversions, the rows it keeps, what it costs in logits, and when it is the default.

Measured when the bounds were set (tiny models, float32 activations, 32 decode steps after a 4-token prompt):
float16 keys and values move the logits by 2e-5 to 1e-4 of their range against a float32 cache, and no
greedy token. With int8 activations the same rounding can flip an activation's code (~6e-3 of the range, as
two float32 paths already differ: `test_parity.FLIP`), so that bound is taken with float activations.
"""

import numpy as np
import pytest
from numba import njit

from helpers import build_model, tiny_moe_spec
from moedge.exporter import export
from moedge.exporter.checkpoint import save_checkpoint
from moedge.runtime import InputError, Model
from moedge.runtime.half import narrow, to_float32, widen
from moedge.runtime.kv_cache import KVCache

PROMPT = [5, 17, 99, 3]
STEPS = [150, 42, 7, 7, 201, 0, 64, 128] * 4  # 32 steps: every expert path, past a page of cache rows
SPEC = tiny_moe_spec(n_layers=3, layer_kinds=("dense", "moe", "moe"), n_kv_heads=2)
LOGIT_BOUND = 5e-4  # of the logit range: float16 rounding of the cache, float activations (measured ≤ 1e-4)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(int8 dense linears: float16 cache by default, float32 dense linears: float32 by default)."""
    root = tmp_path_factory.mktemp("kv16")
    ckpt = save_checkpoint(build_model(SPEC), root / "ckpt")
    export(ckpt, root / "int8.moedge", show_progress=False)
    export(ckpt, root / "float.moedge", float_dense=True, show_progress=False)
    return root / "int8.moedge", root / "float.moedge"


@njit(cache=False)
def _widen_all(bits, out):
    for i in range(bits.shape[0]):
        out[i] = widen(bits[i])


@njit(cache=False)
def _narrow_all(x, out):
    for i in range(x.shape[0]):
        out[i] = narrow(x[i], out)


def test_the_kernels_convert_float16_as_numpy_does():
    """Every float16 bit pattern widens to numpy's float32 (one element, or a whole array); float32 values (random
    bits, the halfway cases between two float16s, subnormals, overflow) narrow to numpy's float16 bits: round to
    nearest, ties to even."""
    every = np.arange(1 << 16, dtype=np.uint16)
    wide = np.empty(every.shape, np.float32)
    _widen_all(every, wide)
    np.testing.assert_array_equal(wide, every.view(np.float16).astype(np.float32))  # NaNs where numpy's are
    np.testing.assert_array_equal(to_float32(every.reshape(16, 64, 64)), wide.reshape(16, 64, 64))  # a whole array
    rng = np.random.default_rng(0)
    halves = every.view(np.float16).astype(np.float32)
    finite = np.sort(halves[np.isfinite(halves)])
    ties = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact in float32: one bit past float16's mantissa
    x = np.concatenate([rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint32).view(np.float32), ties.astype(np.float32),
                        np.float32([65504, 65519.99, 65520, 1e6, -1e6, 6e-8, 2.9e-8, 3e-8, -0.0, np.inf, -np.inf])])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    got = np.empty(x.shape, np.uint16)
    _narrow_all(x, got)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


def test_the_default_follows_the_dense_linears(bundles):
    int8, float_dense = bundles
    assert Model.load(int8, threads=1).weights.kv_dtype == "float16"
    assert Model.load(int8, threads=1, activations="float").weights.kv_dtype == "float32"  # the exact reference
    assert Model.load(float_dense, threads=1).weights.kv_dtype == "float32"
    assert Model.load(float_dense, threads=1, kv_cache="float16").weights.kv_dtype == "float16"
    with pytest.raises(InputError, match="kv_cache must be 'float16' or 'float32', got 'int8'"):
        Model.load(int8, threads=1, kv_cache="int8")
    with pytest.raises(InputError, match="KV cache's dtype"):
        KVCache(SPEC, "bfloat16")


def _sessions(bundle, decode="numba", activations="int8"):
    return {dtype: Model.load(bundle, threads=1, decode=decode, activations=activations, kv_cache=dtype).session()
            for dtype in ("float32", "float16")}


@pytest.mark.parametrize("decode", ["numba", "onnx"])
def test_a_float16_cache_keeps_the_float32_rows_rounded(bundles, decode):
    """After the same prompt, the float16 cache holds the float32 cache's rows rounded (written by numpy from the
    graphs); after a decode step, layer 0's new row too (written by the numba kernel, or by numpy from the
    graph): layer 0's keys and values depend on the token alone, not on the cache. A float16 cache holds half."""
    sessions = _sessions(bundles[0], decode)
    for s in sessions.values():
        s.prefill(PROMPT)
    wide, half = sessions["float32"].cache, sessions["float16"].cache
    rows = len(PROMPT)
    for a, b in ((wide.k, half.k), (wide.v, half.v)):
        np.testing.assert_array_equal(b[:, :rows], a[:, :rows].astype(np.float16).view(np.uint16))
    assert half.held_bytes * 2 == wide.held_bytes
    for s in sessions.values():
        s.decode(STEPS[0])
    for a, b in ((wide.k, half.k), (wide.v, half.v)):
        np.testing.assert_array_equal(b[0, rows], a[0, rows].astype(np.float16).view(np.uint16))
        assert (b[1:, rows] != a[1:, rows].astype(np.float16).view(np.uint16)).any()  # later layers read the past


def test_float16_cache_moves_the_logits_by_its_rounding_only(bundles):
    """Float activations, so that no activation code flips: float16 keys and values against float32 ones."""
    sessions = _sessions(bundles[0], activations="float")
    got = {}
    for dtype, s in sessions.items():
        s.prefill(PROMPT)
        got[dtype] = np.stack([s.decode(t) for t in STEPS])
    want, half = got["float32"], got["float16"]
    assert 0 < np.abs(half - want).max() <= LOGIT_BOUND * (want.max() - want.min())
    np.testing.assert_array_equal(half.argmax(-1), want.argmax(-1))


def test_numba_decode_equals_the_onnx_graphs_over_a_float16_cache(bundles):
    """Both paths read the same rounded past and attend to the step's own row as computed (float32): the layer
    graphs are the reference, as over a float32 cache (`test_parity`). Float activations: equal to rounding."""
    fast, reference = (Model.load(bundles[0], threads=1, decode=path, activations="float",
                                  kv_cache="float16").session() for path in ("numba", "onnx"))
    want = reference.prefill(PROMPT)
    fast.prefill(PROMPT)
    got, want = (np.stack([s.decode(t) for t in STEPS]) for s in (fast, reference))
    assert np.abs(got - want).max() <= 1e-5 * (want.max() - want.min())
