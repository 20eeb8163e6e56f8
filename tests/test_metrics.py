"""atft_core.ic and atft_core.evaluate.metrics against scipy and a plain-Python reference, day by day."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats

from atft_core.evaluate.metrics import SignalMetrics, summarize, summarize_horizons
from atft_core.ic import daily_ic, long_short, rank_average


def _panel(seed: int = 0, days: int = 40, stocks: int = 80, missing: float = 0.15):
    """Rounded values (many ties) with NaN holes on either side."""
    rng = np.random.default_rng(seed)
    pred = np.round(rng.normal(size=(days, stocks)), 1)
    target = np.round(0.3 * pred + rng.normal(size=(days, stocks)), 1)
    pred[rng.random((days, stocks)) < missing] = np.nan
    target[rng.random((days, stocks)) < missing] = np.nan
    return pred, target


def test_rank_average_equals_scipy_rankdata_with_ties_and_holes():
    rng = np.random.default_rng(1)
    a = np.round(rng.normal(size=(30, 50)), 1)
    valid = rng.random(a.shape) > 0.2
    valid[0] = False  # an empty row is all NaN
    ranks = rank_average(a, valid)
    assert np.isnan(ranks[~valid]).all()
    for d in range(1, a.shape[0]):
        np.testing.assert_allclose(ranks[d, valid[d]], stats.rankdata(a[d, valid[d]], method="average"))


def test_daily_ic_equals_scipy_per_day():
    pred, target = _panel()
    ic, rankic = daily_ic(pred, target, min_stocks=20)
    for d in range(pred.shape[0]):
        m = np.isfinite(pred[d]) & np.isfinite(target[d])
        assert m.sum() >= 20
        assert ic[d] == pytest.approx(stats.pearsonr(pred[d, m], target[d, m])[0], abs=1e-9)
        assert rankic[d] == pytest.approx(stats.spearmanr(pred[d, m], target[d, m])[0], abs=1e-9)


def test_rankic_ranks_only_names_valid_on_both_sides():
    # stock 0 has the highest prediction but no target: it must not shift anyone's rank
    pred = np.array([[100.0, 1.0, 2.0, 3.0, 4.0]])
    target = np.array([[np.nan, 4.0, 3.0, 2.0, 1.0]])
    _, rankic = daily_ic(pred, target, min_stocks=2)
    assert rankic[0] == pytest.approx(-1.0)


def test_days_below_min_stocks_are_nan():
    pred, target = _panel(days=5, stocks=30, missing=0.0)
    pred[2, 5:] = np.nan  # 5 valid names on day 2
    target[4, :] = np.nan
    ic, rankic = daily_ic(pred, target, min_stocks=10)
    ls = long_short(pred, target, min_stocks=10)
    for arr in (ic, rankic, ls):
        assert np.isnan(arr[[2, 4]]).all()
        assert np.isfinite(arr[[0, 1, 3]]).all()


def test_constant_prediction_day_is_nan_not_zero():
    # undefined correlation (as scipy): a collapsed model must not score a harmless-looking 0
    pred, target = _panel(days=3, stocks=40, missing=0.0)
    pred[1] = 0.1  # 0.1 is not exact in binary: mean-centring leaves 1e-17 noise, not 0
    target[2] = 3.0
    ic, rankic = daily_ic(pred, target, min_stocks=20)
    assert np.isnan(ic[1:]).all() and np.isnan(rankic[1:]).all()
    assert np.isfinite(ic[0]) and np.isfinite(rankic[0])
    # and the constant-prediction day earns exactly zero long-short (ties split evenly)
    assert long_short(pred, target, min_stocks=20)[1] == pytest.approx(0.0, abs=1e-12)


def test_long_short_sign_follows_the_model():
    rng = np.random.default_rng(2)
    target = rng.normal(size=(20, 100))
    perfect = long_short(target, target)
    assert (perfect > 0).all()
    assert (long_short(-target, target) < 0).all()
    np.testing.assert_allclose(long_short(-target, target), -perfect)


def _ls_reference(p: np.ndarray, t: np.ndarray, q: float) -> float:
    """Plain Python: top/bottom n_q by prediction, no ties in the inputs used here."""
    pairs = sorted((pi, ti) for pi, ti in zip(p, t) if math.isfinite(pi) and math.isfinite(ti))
    n_q = max(1, math.floor(len(pairs) * q + 1e-9))
    bottom = sum(ti for _, ti in pairs[:n_q]) / n_q
    top = sum(ti for _, ti in pairs[-n_q:]) / n_q
    return top - bottom


def test_long_short_equals_reference_without_ties():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(15, 57))
    target = rng.normal(size=(15, 57))
    pred[rng.random(pred.shape) < 0.2] = np.nan
    target[rng.random(pred.shape) < 0.2] = np.nan
    for q in (0.1, 0.2, 0.5):
        ls = long_short(pred, target, quantile=q, min_stocks=10)
        for d in range(pred.shape[0]):
            assert ls[d] == pytest.approx(_ls_reference(pred[d], target[d], q), abs=1e-12)


def test_long_short_splits_boundary_ties_evenly():
    # 10 names, decile = 1 name; the top prediction is shared by two names -> each half weight
    pred = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 9, 9]], dtype=float)
    target = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 4, 6]], dtype=float)
    assert long_short(pred, target, quantile=0.1, min_stocks=2)[0] == pytest.approx(5.0 - 1.0)
    # column order cannot change the answer
    perm = np.array([9, 3, 8, 0, 1, 2, 7, 4, 5, 6])
    assert long_short(pred[:, perm], target[:, perm], quantile=0.1, min_stocks=2)[0] == pytest.approx(4.0)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_summarize_equals_plain_python_reference():
    pred, target = _panel(seed=4, days=25, stocks=60)
    pred[7] = 1.0  # undefined day, dropped from the means
    pred[9, 10:] = np.nan  # too few names
    s = summarize(pred, target, min_stocks=20, quantile=0.1)
    ics, rics, lss = [], [], []
    for d in range(pred.shape[0]):
        m = np.isfinite(pred[d]) & np.isfinite(target[d])
        if m.sum() < 20:
            continue
        lss.append(float(long_short(pred[d : d + 1], target[d : d + 1], 0.1, 20)[0]))
        if d == 7:
            continue
        ics.append(stats.pearsonr(pred[d, m], target[d, m])[0])
        rics.append(stats.spearmanr(pred[d, m], target[d, m])[0])
    ic_m, ic_s = _mean_std(ics)
    ric_m, ric_s = _mean_std(rics)
    ls_m, ls_s = _mean_std(lss)
    assert s.n_days == len(rics) == 23
    assert s.ic == pytest.approx(ic_m, abs=1e-9)
    assert s.ic_ir == pytest.approx(ic_m / ic_s, abs=1e-9)
    assert s.rankic == pytest.approx(ric_m, abs=1e-9)
    assert s.rankic_ir == pytest.approx(ric_m / ric_s, abs=1e-9)
    assert s.ls_mean == pytest.approx(ls_m, abs=1e-9)
    assert s.ls_sharpe == pytest.approx(ls_m / ls_s * math.sqrt(252), abs=1e-9)


def test_summarize_undefined_is_nan_and_to_dict_is_json_safe():
    pred, target = _panel(days=1, stocks=50)
    s = summarize(pred, target)
    assert s.n_days == 1 and math.isfinite(s.rankic)
    assert math.isnan(s.rankic_ir) and math.isnan(s.ls_sharpe)  # one day: no dispersion
    d = s.to_dict()
    assert d["rankic_ir"] is None and d["n_days"] == 1
    empty = summarize(np.full((3, 30), np.nan), np.zeros((3, 30)))
    assert empty.n_days == 0 and math.isnan(empty.rankic) and math.isnan(empty.ls_mean)


def test_summarize_horizons_matches_per_horizon():
    rng = np.random.default_rng(5)
    pred = rng.normal(size=(10, 40, 3))
    target = pred + rng.normal(size=pred.shape) * np.array([0.5, 1.0, 3.0])
    out = summarize_horizons(pred, target, (1, 5, 20), min_stocks=20)
    assert list(out) == [1, 5, 20]
    assert all(isinstance(v, SignalMetrics) for v in out.values())
    assert out[1].rankic > out[5].rankic > out[20].rankic
    assert out[5] == summarize(pred[:, :, 1], target[:, :, 1], min_stocks=20)
    with pytest.raises(ValueError):
        summarize_horizons(pred, target, (1, 5), min_stocks=20)


def test_full_panel_size_runs():
    # speed sanity, not a timing assertion: 10 years x 4,000 names in one vectorised call
    rng = np.random.default_rng(6)
    pred = rng.normal(size=(2500, 4000))
    target = 0.05 * pred + rng.normal(size=pred.shape)
    pred[rng.random(pred.shape) < 0.1] = np.nan
    t0 = time.perf_counter()
    s = summarize(pred, target)
    elapsed = time.perf_counter() - t0
    assert s.n_days == 2500 and 0.02 < s.rankic < 0.08
    print(f"summarize 2500x4000: {elapsed:.2f}s")


def test_day_blocks_do_not_change_results(monkeypatch):
    from atft_core import ic as ic_module

    pred, target = _panel(seed=7, days=23, stocks=50)
    whole = summarize(pred, target, min_stocks=20)
    ic, rankic = daily_ic(pred, target, min_stocks=20)
    monkeypatch.setattr(ic_module, "BLOCK_DAYS", 4)
    ic_b, rankic_b = daily_ic(pred, target, min_stocks=20)
    np.testing.assert_array_equal(ic, ic_b)
    np.testing.assert_array_equal(rankic, rankic_b)
    assert summarize(pred, target, min_stocks=20) == whole
