"""`fast_exp` (the kernels' SiLU and softmax) against numpy's exp over float32's useful range."""

import numpy as np
from numba import njit

from moedge.runtime.fast_exp import fast_exp


@njit(cache=False)
def _apply(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


def test_fast_exp_is_within_four_ulps_of_numpy():
    x = np.concatenate([np.linspace(-87, 88, 100_001), np.random.default_rng(0).standard_normal(10_000) * 20,
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    x = x[(x > -87.0) & (x < 88.0)]
    got = np.empty_like(x)
    _apply(x, got)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) <= 4e-7


def test_fast_exp_saturates_and_keeps_nan():
    x = np.array([-1e4, -200.0, 200.0, 1e4, np.nan, np.inf, -np.inf], dtype=np.float32)
    got = np.empty_like(x)
    _apply(x, got)
    assert 0 <= got[0] < 1e-37 and 0 <= got[1] < 1e-37 and got[5] > 1e38 and 0 <= got[6] < 1e-37
    assert got[2] > 1e38 and got[3] > 1e38 and np.isnan(got[4])


@njit(cache=False, fastmath=True)
def _apply_fast(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


def test_fast_exp_keeps_nan_inside_fastmath_code():
    x = np.array([1.0, np.nan, -2.0, np.nan] * 8, dtype=np.float32)
    got = np.empty_like(x)
    _apply_fast(x, got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
