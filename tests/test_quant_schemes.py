"""The scheme registry: int4 goldens (bit-exact, ggml Q4_0's grid), packing, refusals."""

import numpy as np
import pytest

from moedge.quant import SCHEMES, dequantize, dequantize_stored, pack_int4, quantize_int4, unpack_int4
from moedge.runtime.kernel_codes import row_dot, row_values


def test_int4_golden_is_bit_exact():
    """d = m / −8 for the group's value m of largest magnitude; q = clip(round-half-even(w / d), −8, 7)."""
    row = np.array([-4.0, 2.0, 1.0, 0.25, 3.5, -0.75, 0.0, 4.0] * 4, np.float32)  # m = −4 (first of ±4)
    t = quantize_int4(row[None], 32)
    np.testing.assert_array_equal(t.scale, [[0.5]])
    np.testing.assert_array_equal(t.q[0, :8], [-8, 4, 2, 0, 7, -2, 0, 7])  # 0.25/0.5 = 0.5 → 0; −1.5 → −2; 8 → 7
    neg = quantize_int4(-row[None], 32)  # m = +4: d = −0.5, codes flip sign, 4 → −8 exactly
    np.testing.assert_array_equal(neg.scale, [[-0.5]])
    np.testing.assert_array_equal(neg.q[0, :8], [-8, 4, 2, 0, 7, -2, 0, 7])
    np.testing.assert_array_equal(quantize_int4(np.zeros((1, 32), np.float32), 32).q, 0)


def test_int4_packing_golden():
    """Block of 32: byte j holds input j (low nibble) and input j + 16 (high nibble), each + 8."""
    q = np.arange(64, dtype=np.int8).reshape(1, 64) % 16 - 8
    packed = pack_int4(q)
    assert packed.shape == (1, 32) and packed.dtype == np.uint8
    assert packed[0, 0] == (q[0, 0] + 8) | ((q[0, 16] + 8) << 4)
    assert packed[0, 17] == (q[0, 33] + 8) | ((q[0, 49] + 8) << 4)
    np.testing.assert_array_equal(unpack_int4(packed), q)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_round_trip_within_half_a_step(group):
    w = np.random.default_rng(0).standard_normal((3, 16, 256)).astype(np.float32)
    t = quantize_int4(w, group)
    assert t.q.min() >= -8 and t.q.max() <= 7 and t.scale.shape == (3, 16, 256 // group)
    step = np.abs(np.repeat(t.scale, group, axis=-1))
    # clipping at +7 can cost up to one step for values opposite the extreme; the rest round to half a step
    assert np.all(np.abs(dequantize(t) - w) <= step + 1e-6)
    assert np.mean(np.abs(dequantize(t) - w) <= step / 2 + 1e-6) > 0.99


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_stored_codes_round_trip_and_kernels_read_them(scheme):
    """pack → dequantize_stored gives the dequantized weight; the kernels' group reader agrees."""
    s = SCHEMES[scheme]
    w = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    group = 0 if scheme != "int4" else 32
    t = s.quantize(w, group)
    stored = s.pack(t.q)
    assert stored.shape == s.stored_shape(4, 64) and stored.dtype == s.code_dtype
    np.testing.assert_array_equal(dequantize_stored(scheme, stored, t.scale), dequantize(t))
    g = t.group_size
    view = stored.reshape(4, 64 // g, g // 32, 16) if scheme == "int4" else stored.reshape(4, 64 // g, -1)
    x2 = np.linspace(-1, 1, 64, dtype=np.float32).reshape(64 // g, g)
    values = np.empty_like(x2)
    row_values(view, t.scale, 2, values)
    np.testing.assert_array_equal(values.ravel(), dequantize(t)[2])
    assert np.isclose(row_dot(view, t.scale, 2, x2), dequantize(t)[2] @ x2.ravel(), rtol=1e-6)



@pytest.mark.parametrize(("scheme", "cols", "group", "message"), [
    ("int4", 64, 0, "needs a group size"), ("int4", 48, 32, "divisible by 32"),
    ("int4", 96, 64, "does not divide"), ("int8", 96, 64, "does not divide")])
def test_groups_that_do_not_fit_are_refused(scheme, cols, group, message):
    with pytest.raises(ValueError, match=message):
        SCHEMES[scheme].check_group(cols, group)
