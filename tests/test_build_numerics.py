"""The cache build's fast numeric routines against the plain numpy / metrics definitions they replace."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from atft_core.data.cache import build_kernels
from atft_core.data.cache.leak import MIN_STOCKS, daily_rankics
from atft_core.data.cache.normalise import _MAD_SCALE, _mad_sorted, _median_sorted, cross_section_days, fill_market
from atft_core.ic import daily_ic


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


def _day_panel(seed: int, days: int = 5, stocks: int = 300, feats: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """x [c, S, F] with gaps, ties, a constant feature-day, a MAD-0 / std > 0 one; stocks without a row NaN."""
    rng = np.random.default_rng(seed)
    x = np.moveaxis(_with_gaps(rng, (days, feats, stocks)), 1, 2).copy()
    x[1, :, 4] = 3.0  # constant on a day: MAD and std 0 -> 0
    x[2, :, 5] = np.where(np.arange(stocks) < stocks - 10, 1.0, np.arange(stocks)).astype(np.float32)  # MAD 0, std > 0
    valid = rng.random((days, stocks)) > 0.15
    x[~valid] = np.nan
    return x, valid


def _feature_major(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 1))  # [c, S, F] -> the raw chunks' [c, F, S]


@pytest.mark.parametrize("compiled", [False, True])
def test_cross_section_days_equals_reference(compiled):
    x, valid = _day_panel(1)
    got = np.full_like(x, 99.0)
    raw = _feature_major(x)
    raw.transpose(0, 2, 1)[~valid] = 123.0  # cells without a row hold anything (a reused buffer's values)
    days, nonzero = cross_section_days(raw, valid, 5.0, got, compiled=compiled)
    want = np.nan_to_num(_reference_normalise(x, np.ones(x.shape[2], bool), 5.0), nan=0.0)
    want[~valid] = 0.0
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert np.array_equal(nonzero, (got != 0).any(axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN feature-days
        np.testing.assert_array_equal(days.n, np.isfinite(x).sum(axis=1))
        np.testing.assert_allclose(days.total, np.nansum(x.astype(np.float64), axis=1), rtol=1e-12)
        np.testing.assert_array_equal(days.lo, np.nanmin(x, axis=1))
        np.testing.assert_array_equal(days.hi, np.nanmax(x, axis=1))


def test_compiled_build_kernels_give_the_numpy_numbers():
    """The fused kernels against the numpy steps they replace, on a wide panel with every odd case."""
    assert build_kernels.AVAILABLE, "numba is a dependency (pyproject.toml): `make install` installs it"
    x, valid = _day_panel(7, days=3, stocks=2_001, feats=70)
    a, b = np.empty_like(x), np.empty_like(x)
    days_a, nz_a = cross_section_days(_feature_major(x), valid, 5.0, a, compiled=False)
    days_b, nz_b = cross_section_days(_feature_major(x), valid, 5.0, b, compiled=True)
    exact = (a == b).mean()
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    assert exact > 0.999  # only the std fallback's rows may differ, in the last bits (float64 vs float32 sums)
    np.testing.assert_array_equal(nz_a, nz_b)
    for name in ("n", "lo", "hi"):
        np.testing.assert_array_equal(getattr(days_a, name), getattr(days_b, name))
    np.testing.assert_allclose(days_a.total, days_b.total, rtol=1e-12)


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


def test_fill_market_sets_every_stock_with_a_row_to_the_days_value():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 80, 5)).astype(np.float32)
    valid = rng.random((4, 80)) > 0.2
    valid[3] = False  # a day without rows: nothing nonzero from it
    market = np.array([False, True, False, False, True])
    market_z = rng.standard_normal((4, 5)).astype(np.float32)
    market_z[:3, 4] = 0.0  # nonzero only on the day without rows
    want = x.copy()
    want[:, :, market] = np.where(valid[:, :, None], market_z[:, None, market], 0.0)
    nonzero = fill_market(x, valid, market, market_z)
    np.testing.assert_array_equal(x, want)
    assert nonzero.tolist() == [False, True, False, False, False]


def test_compiled_daily_rankics_rank_each_feature_once_with_the_same_numbers(monkeypatch):
    """Horizons known on different names (4 rankings of every feature a day in numpy) from one argsort."""
    rng = np.random.default_rng(5)
    n, s, f, h = 5, 300, 9, 4
    x = np.round(rng.standard_normal((n, s, f)) * 2).astype(np.float32)  # ties
    y = rng.standard_normal((n, s, h)).astype(np.float32)
    y[:, :, 1] = np.round(y[:, :, 1])  # ties in a target
    valid = rng.random((n, s)) > 0.1
    for kh in range(h):  # each horizon unknown on different names
        y[rng.random((n, s)) < 0.05 * (kh + 1), kh] = np.nan
    x[:, :, 2] = 1.0  # constant: NaN
    y[1, :, 3] = np.nan  # a horizon unknown on a day
    y[2, MIN_STOCKS - 3:, 2] = np.nan  # too few names for one horizon
    x[:, :, 5] = np.nan_to_num(y[:, :, 0]) * 3  # a copy of a target where known
    compiled = daily_rankics(x, y, valid)
    monkeypatch.setattr(build_kernels, "AVAILABLE", False)
    plain = daily_rankics(x, y, valid)
    np.testing.assert_allclose(compiled[0], plain[0], rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(compiled[0]), np.isnan(plain[0]))
    assert np.array_equal(compiled[1], plain[1])
    assert np.nanmin(compiled[0][:, 0, 5]) > 0.99 and np.isnan(compiled[0][:, :, 2]).all()


def test_compiled_gather_equals_the_numpy_gather(monkeypatch):
    """`gather_columns` against the numpy path on what a record batch can hold: nulls (one whose slot's bytes
    are infinite: not a value, not counted), infinite values, a sliced column (nonzero offset), a column
    without a validity bitmap, and rows whose stocks skip (no row that day) and whose day changes mid-batch."""
    import pyarrow as pa

    from atft_core.data.cache import grid_build

    rng = np.random.default_rng(3)
    days, stocks = 3, 300
    present = [np.flatnonzero(rng.random(stocks) < 0.85) for _ in range(days)]
    day = np.concatenate([np.full(len(p), d, np.int32) for d, p in enumerate(present)])
    stock = np.concatenate(present).astype(np.int32)
    n = len(day)
    raw = rng.standard_normal(n + 5).astype(np.float32)
    raw[[307, 340, 341]] = np.inf  # all on days 1-2 (day 0 has ~255 rows)
    raw[390] = -np.inf
    null = rng.random(n + 5) < 0.03
    null[[312, 313]] = True
    raw[312] = np.inf  # a null slot holding inf bytes
    with_nulls = pa.Array.from_buffers(pa.float32(), n + 5, [pa.py_buffer(np.packbits(~null, bitorder="little")),
                                                             pa.py_buffer(raw)])
    cols = [with_nulls.slice(5 - k, n) for k in range(3)] + [pa.array(raw[:n])]  # offsets 5, 4, 3; one no bitmap
    sel = np.flatnonzero(day >= 1)  # the rows of a chunk starting at day 1
    out = {}
    for compiled in (True, False):
        monkeypatch.setattr(build_kernels, "AVAILABLE", compiled)
        slab = np.full((days - 1, len(cols), stocks), -7.0, np.float32)
        infinite = np.zeros(len(cols), np.int64)
        grid_build._gather(cols, sel, day, 1, stock, slab, infinite)
        out[compiled] = slab, infinite
    (a, inf_a), (b, inf_b) = out[True], out[False]
    np.testing.assert_array_equal(a, b)  # NaN == NaN here; cells without a row untouched by both
    np.testing.assert_array_equal(inf_a, inf_b)
    values = cols[0].to_numpy(zero_copy_only=False)[sel]
    assert inf_a[0] == np.isinf(values).sum() > 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_values_equal_pyarrows_to_numpy(dtype):
    """The build's Arrow -> numpy conversion (without pyarrow importing pandas) against `to_numpy`: nulls as
    NaN, sliced columns, no nulls, all nulls, empty."""
    import pyarrow as pa

    from atft_core.data.cache.arrow_numpy import float_values

    rng = np.random.default_rng(5)
    v = rng.standard_normal(100).astype(dtype)
    mask = rng.random(100) < 0.2
    col = pa.array(v, mask=mask)
    for a in (col, col.slice(3, 50), col.slice(13), pa.array(v), pa.array(v).slice(7, 9),
              pa.array([None] * 5, type=col.type), col.slice(0, 0)):
        got = float_values(a)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, a.to_numpy(zero_copy_only=False))
    with pytest.raises(TypeError, match="float column"):
        float_values(pa.array([1, 2, 3]))


def test_build_asks_numpy_for_small_pages_and_sets_the_switch_back():
    """numpy's huge-page switch is process-wide: off while the grid is streamed, as it was after."""
    from numpy._core.multiarray import _set_madvise_hugepage

    from atft_core.data.cache.grid_build import _small_pages

    before = _set_madvise_hugepage(True)
    try:
        with _small_pages():
            assert _set_madvise_hugepage(False) is False  # off inside
        assert _set_madvise_hugepage(True) is True  # and back on
        with pytest.raises(RuntimeError), _small_pages():
            raise RuntimeError("a failed build")
        assert _set_madvise_hugepage(True) is True  # back on after an error too
    finally:
        _set_madvise_hugepage(before)
