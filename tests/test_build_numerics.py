"""The cache build's fast numeric routines against the plain numpy / metrics definitions they replace."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from atft_core.data.leak import MIN_STOCKS, daily_rankics
from atft_core.data.normalise import _MAD_SCALE, _mad_sorted, _median_sorted, normalise_cross_section, normalise_days
from atft_core.evaluate.metrics import daily_ic


def _with_gaps(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Values with ties (rounded), NaNs, an all-NaN row, a single-value row and a constant row."""
    a = np.round(rng.standard_normal(shape) * 3).astype(dtype)  # few distinct values: many ties
    a[rng.random(shape) < 0.2] = np.nan
    flat = a.reshape(-1, shape[-1])
    flat[0] = np.nan
    flat[1] = np.nan
    flat[1, -1] = 2.5
    flat[2] = 7.0
    flat[3, ::2] = np.nan
    return a


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_median_sorted_equals_nanmedian(dtype):
    rng = np.random.default_rng(0)
    for cols in (1, 2, 7, 50):
        a = _with_gaps(rng, (40, cols), dtype).reshape(-1, cols)
        got = _median_sorted(np.sort(a, axis=1), np.isfinite(a).sum(axis=1))[:, 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN row
            want = np.nanmedian(a.astype(np.float64), axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        assert np.array_equal(np.isnan(got), np.isnan(want))


def test_mad_without_a_second_sort_equals_sorting_the_deviations():
    """`_mad_sorted` (binary search over the two ascending runs) gives the sorted-deviation MAD bit for bit."""
    rng = np.random.default_rng(3)
    for trial in range(400):
        rows, width = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        a = rng.standard_normal((rows, width)).astype(np.float32)
        if trial % 3 == 0:
            a = np.round(a * 2) / 2  # ties, also at the median
        if trial % 5 == 0:
            a[:, : width // 2] = 1.0  # a run of equal values: MAD 0
        a[rng.random(a.shape) < rng.random() * 0.6] = np.nan  # gaps, some rows all missing
        ordered, n = np.sort(a, axis=1), np.isfinite(a).sum(axis=1)
        med = _median_sorted(ordered, n)
        want = _median_sorted(np.sort(np.abs(a - med), axis=1), n)
        np.testing.assert_array_equal(_mad_sorted(ordered, n, med), want, err_msg=str(a))


def _reference_normalise(x: np.ndarray, which: np.ndarray, clip: float) -> np.ndarray:
    """The textbook per-day robust z-score with numpy's nan-functions, day by day, feature by feature."""
    out = x.copy()
    for d in range(x.shape[0]):
        for j in np.flatnonzero(which):
            v = x[d, :, j].astype(np.float64)
            if not np.isfinite(v).any():
                continue
            med = np.nanmedian(v)
            scale = np.nanmedian(np.abs(v - med)) * _MAD_SCALE
            if not scale > 1e-12:
                scale = np.nanstd(v)
            z = (v - med) / scale if scale > 1e-12 else np.zeros_like(v)
            out[d, :, j] = np.where(np.isfinite(v), np.clip(z, -clip, clip), np.nan)
    return out


def test_normalise_cross_section_equals_reference():
    rng = np.random.default_rng(1)
    x = np.moveaxis(_with_gaps(rng, (5, 6, 300)), 1, 2).copy()  # [c=5, S=300, F=6]
    x[1, :, 4] = 3.0  # constant on a day: MAD and std 0 -> 0
    x[2, :, 5] = np.where(np.arange(300) < 290, 1.0, np.arange(300.0)).astype(np.float32)  # MAD 0, std > 0
    for which in (np.ones(6, bool), np.array([True, False, True, True, False, True])):
        got = x.copy()
        normalise_cross_section(got, which, 5.0)
        want = _reference_normalise(x, which, 5.0)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
        assert np.array_equal(np.isnan(got), np.isnan(want))


def _reference_rankics(x, y, valid):
    n, _, f = x.shape
    ric = np.full((n, y.shape[2], f), np.nan)
    for kh in range(y.shape[2]):
        for j in range(f):
            feat = np.where(valid, x[:, :, j], np.nan)
            ric[:, kh, j] = daily_ic(feat, np.where(valid, y[:, :, kh], np.nan), min_stocks=MIN_STOCKS)[1]
    return ric


def test_daily_rankics_equal_daily_ic():
    rng = np.random.default_rng(2)
    n, s, f, h = 4, 60, 7, 3
    x = np.round(rng.standard_normal((n, s, f)) * 2).astype(np.float32)  # ties
    y = rng.standard_normal((n, s, h)).astype(np.float32)
    valid = rng.random((n, s)) > 0.1
    x[:, :, 2] = 0.0  # constant: NaN
    x[0, :, 3] = np.nan  # no values on a day
    x[1, :5, 4] = np.nan  # some missing: the pairwise path
    x[:, :, 5] = y[:, :, 0] + 0.01 * rng.standard_normal((n, s))  # a near-copy of the target
    y[2, :, 1] = np.nan  # a horizon unknown on a day
    y[3, 10:20, 2] = np.nan  # known on fewer names
    valid[3, MIN_STOCKS - 2:] = False  # a day with too few names
    valid[3, :3] = True
    ric, stocks = daily_rankics(x, y, valid)
    want = _reference_rankics(x, y, valid)
    np.testing.assert_allclose(ric, want, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(ric), np.isnan(want))
    assert np.nanmax(ric[:, 0, 5]) > 0.9
    pair = valid[:, :, None, None] & np.isfinite(x)[:, :, None, :] & np.isfinite(y)[:, :, :, None]
    assert np.array_equal(stocks, pair.sum(axis=1))


def test_normalise_days_equals_the_steps_it_fuses():
    rng = np.random.default_rng(3)
    x = np.moveaxis(_with_gaps(rng, (4, 5, 80)), 1, 2).copy()  # [c=4, S=80, F=5]
    valid = rng.random((4, 80)) > 0.2
    market = np.array([False, True, False, False, True])
    market_z = rng.standard_normal((4, 5)).astype(np.float32)
    want = x.copy()
    normalise_cross_section(want, ~market, 5.0)
    want[:, :, market] = market_z[:, None, market]
    want = np.nan_to_num(want, nan=0.0)
    want[~valid] = 0.0
    got = x.copy()
    nonzero = normalise_days(got, valid, market, market_z, 5.0)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(nonzero, (want != 0).any(axis=(0, 1)))
