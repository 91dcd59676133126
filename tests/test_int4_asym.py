"""The asymmetric int4 grid (`quant.int4_asym`, ggml Q4_1's) that `samples/int4_grids.py` measures against the
symmetric one bundles store."""

import numpy as np
import pytest

from moedge.quant import dequantize, quantize_int4
from moedge.quant.int4_asym import dequantize_int4_asym, quantize_int4_asym


def test_golden_is_bit_exact():
    """d = (max − min) / 15, q = clip(round-half-even((w − min) / d), 0, 15): both ends land on codes 0 and 15."""
    row = np.array([-1.0, 14.0, 0.0, 0.5, 1.5, 6.25, -0.5, 13.75] * 4, np.float32)  # min −1, max 14: d = 1
    t = quantize_int4_asym(row[None], 32)
    np.testing.assert_array_equal(t.minimum, [[-1.0]])
    np.testing.assert_array_equal(t.scale, [[1.0]])
    np.testing.assert_array_equal(t.q[0, :8], [0, 15, 1, 2, 2, 7, 0, 15])  # 1.5 → 2, 2.5 → 2, 0.5 → 0 (half-even)
    assert t.q.dtype == np.uint8
    flat = quantize_int4_asym(np.full((1, 32), 3.0, np.float32), 32)  # no spread: scale 0, codes 0, min kept
    np.testing.assert_array_equal(flat.scale, 0)
    np.testing.assert_array_equal(flat.q, 0)
    np.testing.assert_array_equal(dequantize_int4_asym(flat), 3.0)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_round_trip_within_half_a_step(group):
    w = np.random.default_rng(0).standard_normal((3, 16, 256)).astype(np.float32) + 0.3
    t = quantize_int4_asym(w, group)
    assert t.q.max() <= 15 and t.scale.shape == t.minimum.shape == (3, 16, 256 // group)
    step = np.repeat(t.scale, group, axis=-1)
    back = dequantize_int4_asym(t)
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6)  # no clipping: both ends are on the grid
    grouped = w.reshape(3, 16, -1, group)
    np.testing.assert_allclose(back.reshape(grouped.shape).min(-1), grouped.min(-1), atol=1e-6)
    np.testing.assert_allclose(back.reshape(grouped.shape).max(-1), grouped.max(-1), rtol=1e-6, atol=1e-6)


def test_an_unbalanced_group_is_closer_than_on_the_symmetric_grid():
    """The offset is what the second number buys: a group all on one side of zero uses all 16 levels."""
    w = np.random.default_rng(1).uniform(1.0, 2.0, (8, 128)).astype(np.float32)
    asym = np.abs(dequantize_int4_asym(quantize_int4_asym(w, 32)) - w).mean()
    sym = np.abs(dequantize(quantize_int4(w, 32)) - w).mean()
    assert asym < sym / 4


@pytest.mark.parametrize("w, group, message", [
    (np.zeros(32, np.float32), 32, "shape"),
    (np.full((1, 32), np.nan, np.float32), 32, "NaN"),
    (np.zeros((1, 64), np.float32), 48, "multiple of 32"),
    (np.zeros((1, 96), np.float32), 64, "divide"),
])
def test_bad_inputs_are_refused(w, group, message):
    with pytest.raises(ValueError, match=message):
        quantize_int4_asym(w, group)
