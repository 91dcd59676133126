"""int8 quantization: bit-exact goldens, group shapes, degenerate and extreme inputs."""

import numpy as np
import pytest

from moedge.quant import dequantize, quant_error, quantize_int8


def test_golden_per_channel_is_bit_exact():
    w = np.array([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-3.0, 1.5, 2.25, 0.75]], np.float32)
    t = quantize_int8(w)
    np.testing.assert_array_equal(t.q, [[127, -64, 32, 0], [0, 0, 0, 0], [-127, 64, 95, 32]])
    np.testing.assert_array_equal(t.scale, np.array([[1 / 127], [0.0], [3 / 127]], np.float32))
    assert t.group_size == 4
    np.testing.assert_array_equal(dequantize(t)[1], 0.0)


def test_golden_per_group_is_bit_exact():
    w = np.array([[0.5, -1.0, 4.0, 2.0]], np.float32)
    t = quantize_int8(np.tile(w, (1, 16)), group_size=32)
    assert t.scale.shape == (1, 2)
    np.testing.assert_array_equal(t.q[0, :4], [16, -32, 127, 64])
    # round half to even: 0.5 * 127 / 4 = 15.875 → 16; exact halves go to the even neighbour
    halves = np.array([[2.5, -2.5, 127.0, 1.5] * 8], np.float32)
    np.testing.assert_array_equal(quantize_int8(halves, 32).q[0, :4], [2, -2, 127, 2])


@pytest.mark.parametrize("group", [None, 32, 64, 128])
def test_round_trip_error_is_within_half_a_step(group):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 48, 256)).astype(np.float32)
    t = quantize_int8(w, group)
    n_groups = 1 if group is None else 256 // group
    assert t.q.shape == w.shape and t.scale.shape == (3, 48, n_groups)
    step = np.repeat(t.scale, t.group_size, axis=-1)
    assert np.all(np.abs(dequantize(t) - w) <= step / 2 + 1e-7)
    err = quant_error(w, t)
    assert err.rel_fro < 0.01 and err.cosine > 0.9999 and err.max_abs <= step.max() / 2 + 1e-7


def test_smaller_groups_are_more_accurate():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 256)).astype(np.float32) * np.geomspace(0.01, 10, 256, dtype=np.float32)
    errors = [quant_error(w, quantize_int8(w, g)).rel_fro for g in (None, 128, 64, 32)]
    assert errors == sorted(errors, reverse=True)


def test_zero_and_extreme_values_stay_finite():
    w = np.zeros((4, 32), np.float32)
    w[1] = np.float32(3e38)
    w[2, 0] = np.float32(1e-45)  # smallest subnormal
    w[3] = -np.float32(3e38)
    t = quantize_int8(w, 32)
    assert np.all(np.isfinite(t.scale)) and np.all(np.isfinite(dequantize(t)))
    np.testing.assert_array_equal(t.q[0], 0)
    np.testing.assert_array_equal(t.q[1], 127)
    np.testing.assert_array_equal(t.q[3], -127)
    err = quant_error(np.zeros((2, 32), np.float32), quantize_int8(np.zeros((2, 32), np.float32)))
    assert (err.max_abs, err.rel_fro, err.cosine) == (0.0, 0.0, 1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_int8(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="does not divide"):
        quantize_int8(np.ones((2, 48), np.float32), 32)
    with pytest.raises(ValueError, match="shape"):
        quantize_int8(np.ones(8, np.float32))
