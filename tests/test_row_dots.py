"""The integer row dots (`kernel_q8.dot4_q8`) of both implementations, portable IR and AVX512-VNNI, on this
machine: int8, uint8 (int8 + 128) and int4 rows, groups of 32, of an even and an odd number of blocks, and
per channel with an odd number of blocks, against numpy in float64 on the same quantized activations. The
activations are laid out here with numpy, as each implementation documents it, so the layout is checked too."""

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from moedge.quant import quantize_activations
from moedge.runtime import kernel_codes
from moedge.runtime.kernel_q8 import dot4_q8, dot4x4_q8
from moedge.runtime.kernel_vnni import NIBBLE_STEP, VNNI

# (inputs, group): 5 blocks a row per channel (odd, > 1), 32 (one block a group, odd count), 64 (two), 96 (three);
# one block alone (no pair), one pair; int4 by steps of 4 blocks: groups of 4 and 8 blocks and 8 per channel (once
# a group), 2 and 32 with the last step of 2 and/or 1 (7, 6, 3 blocks)
SHAPES = [(160, 160), (160, 32), (128, 64), (192, 96), (256, 32), (32, 32), (64, 32), (256, 128), (512, 256),
          (256, 256), (224, 32), (192, 64), (96, 32)]


@njit(cache=False)
def _four(w, s, codes, int4_codes, scales, sums):
    return dot4_q8(w[0], w[1], w[2], w[3], s[0], s[1], s[2], s[3], codes, int4_codes, scales, sums)


def portable_activations(codes: np.ndarray, scales: np.ndarray) -> tuple:
    """codes int16, 16·x_j − x_j+16 per block (j < 16), scales, 8·scale·Σ codes (`kernel_q8`)."""
    c = codes.astype(np.int16)
    mixed = (16 * c[:, :16] - c[:, 16:]).ravel()
    return c.ravel(), mixed, scales, (8 * scales * c.sum(-1)).astype(np.float32)


def vnni_activations(codes: np.ndarray, scales: np.ndarray) -> tuple:
    """codes int8, the int4 operand (by steps of NIBBLE_STEP blocks, then of 2 and 1: each step's inputs 0-15 of
    its blocks, 16-31, −8·Σ codes and three zeros int32 a block, the blocks' scales four times float32), scales,
    Σ codes int32 (`kernel_vnni`)."""
    sums = codes.astype(np.int32).sum(-1, dtype=np.int32)
    parts, first, size = [], 0, NIBBLE_STEP
    while size:
        while codes.shape[0] - first >= size:
            step = codes[first:first + size]
            offsets = np.zeros((size, 4), np.int32)
            offsets[:, 0] = -8 * sums[first:first + size]
            spread = np.repeat(scales[first:first + size], 4).astype(np.float32)
            parts += [step[:, :16].ravel(), step[:, 16:].ravel(), offsets.view(np.int8).ravel(), spread.view(np.int8)]
            first += size
            if size < NIBBLE_STEP:
                break
        size //= 2
    return codes.ravel(), np.concatenate(parts), scales, sums


def rows(kind: str, n: int, group: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four rows of `kind` as the kernels read them (codes [4, groups, ...], scales [4, groups]) and their values."""
    groups = n // group
    scales = rng.uniform(0.5, 2.0, (4, groups)).astype(np.float32)
    if kind == "int4":
        q = rng.integers(-8, 8, (4, n))
        nibbles = (q + 8).astype(np.uint8).reshape(4, n // 32, 2, 16)
        codes = (nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)).reshape(4, groups, group // 32, 16)
    else:
        q = rng.integers(-127, 128, (4, n))
        codes = (q.astype(np.int8) if kind == "int8" else (q + 128).astype(np.uint8)).reshape(4, groups, group)
    return codes, scales, q * np.repeat(scales, group, axis=1)


IMPLEMENTATIONS = [pytest.param(portable_activations, id="portable"),
                   pytest.param(vnni_activations, id="vnni",
                                marks=pytest.mark.skipif(not VNNI, reason="this CPU has no AVX512-VNNI"))]


@pytest.mark.parametrize("layout", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["int8", "uint8", "int4"])
@pytest.mark.parametrize(("n", "group"), SHAPES)
def test_row_dots_match_numpy(layout, kind, n, group):
    rng = np.random.default_rng(n + group)
    codes, scales, values = rows(kind, n, group, rng)
    x = rng.standard_normal(n).astype(np.float32)
    x_codes, x_scales = quantize_activations(x)
    got = np.array(_four(codes, scales, *layout(x_codes, x_scales)))
    ref = values @ (x_codes * x_scales[:, None]).ravel().astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_the_runtime_lays_activations_out_for_this_cpu():
    x = np.random.default_rng(3).standard_normal(160).astype(np.float32)
    x_codes, x_scales = quantize_activations(x)
    expected = (vnni_activations if VNNI else portable_activations)(x_codes, x_scales)
    got = kernel_codes.quantize_activations(x)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-6)


PORTABLE_CHECK = """
import numpy as np
from moedge.quant import quantize_activations, quantize_int8
from moedge.runtime import kernel_codes, kernels
from moedge.runtime.kernel_vnni import VNNI
assert not VNNI
rng = np.random.default_rng(5)
x = rng.standard_normal((2, 96)).astype(np.float32)
codes, scales = quantize_activations(x[0])
got = kernel_codes.quantize_activations(x[0])
assert got[0].dtype == np.int16 and got[1].dtype == np.int16 and got[3].dtype == np.float32
np.testing.assert_array_equal(got[1], (16 * codes[:, :16].astype(np.int16) - codes[:, 16:]).ravel())
q = quantize_int8(rng.standard_normal((40, 96)).astype(np.float32), 0)
out = np.empty((2, 40), np.float32)
kernels.norm_linear(x, np.ones(96, np.float32), np.float32(1e-6), q.q, q.scale, out, kernels.INT8_ACTIVATIONS)
xn = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
c, s = quantize_activations(xn.astype(np.float32))
want = (c * s[..., None]).reshape(2, 96) @ (q.q * q.scale).T.astype(np.float64)
np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * np.abs(want).max())
print("ok")
"""


def test_forcing_the_portable_kernels_switches_the_layout_and_keeps_results(tmp_path):
    """MOEDGE_PORTABLE_KERNELS=1 (in a fresh process, with its own kernel cache): the portable layout, and an int8
    LM head on quantized activations equal to numpy."""
    env = {**os.environ, "MOEDGE_PORTABLE_KERNELS": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", PORTABLE_CHECK], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@njit(cache=False)
def _four_tokens(w, s, codes, int4_codes, scales, sums, tokens, out):
    dot4x4_q8(w[0], w[1], w[2], w[3], s[0], s[1], s[2], s[3], codes, int4_codes, scales, sums, tokens, out)


@pytest.mark.skipif(not VNNI, reason="this CPU has no AVX512-VNNI")
@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize(("n", "group"), SHAPES)
def test_four_tokens_equal_one_token_dots(kind, n, group):
    """`dot4x4_q8` (each row read once for four tokens, out of order and one twice) gives each row and token the
    value `dot4_q8` gives, bit for bit."""
    rng = np.random.default_rng(n + group)
    codes, scales, _ = rows(kind, n, group, rng)
    x = rng.standard_normal((6, n)).astype(np.float32)
    xs = tuple(np.stack(parts) for parts in zip(*(vnni_activations(*quantize_activations(row)) for row in x),
                                                  strict=True))
    tokens = np.array([4, 1, 5, 1])
    out = np.full((4, 4), np.nan, np.float32)
    _four_tokens(codes, scales, *xs, tokens, out)
    for t, token in enumerate(tokens):
        one = np.array(_four(codes, scales, *(part[token] for part in xs)))
        np.testing.assert_array_equal(out[:, t], one, err_msg=f"token {t}")
