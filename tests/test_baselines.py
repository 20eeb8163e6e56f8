"""Ridge baseline, demo oracle and the shuffled-target control (atft_core.evaluate.baselines / controls)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from atft_core.config import DataConfig, SplitConfig
from atft_core.data.cache.normalise import standardise_targets
from atft_core.data.cache.store import Cache
from atft_core.data.split import make_split
from atft_core.evaluate.baselines import comparison_markdown, fit_ridge, oracle_baseline, ridge_baseline
from atft_core.evaluate.controls import control_verdict, noise_band, null_band, shuffled_target_cache
from atft_core.ic import daily_ic

DATA = DataConfig(window=1, min_stocks=20, split=SplitConfig(val_days=60, test_days=0))  # ridge on validation


def synthetic_cache(tmp_path: Path, *, days: int = 200, stocks: int = 80, features: int = 6, signal: float = 1.0,
                    lag: int = 0, seed: int = 0, invalid: float = 0.05) -> Cache:
    """In-memory cache: target_1d = signal * (x[t - lag] @ beta) + unit noise; target_5d pure noise.

    Features are i.i.d. over days and stocks, so x[t] says nothing about x[t-1] (a lagged relation is
    invisible to a model of the last day). Some cells are invalid (no row), some targets unknown.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((days, stocks, features)).astype(np.float32)
    valid = rng.random((days, stocks)) > invalid
    beta = rng.standard_normal(features)
    lin = np.einsum("dsf,f->ds", x.astype(np.float64), beta) / np.linalg.norm(beta)
    lin = np.roll(lin, lag, axis=0)
    y = np.stack([signal * lin + rng.standard_normal((days, stocks)), rng.standard_normal((days, stocks))], axis=2)
    y = (0.01 * y).astype(np.float32)
    y[~valid] = np.nan
    y[rng.random((days, stocks)) < 0.03, 0] = np.nan  # unknown targets on valid rows
    x[~valid] = 0.0
    manifest = {"fingerprint": "synthetic", "source": str(tmp_path / "synthetic.parquet"), "horizons": [1, 5],
                "dates": [str(np.datetime64("2022-01-03") + i) for i in range(days)],
                "codes": [f"{1300 + i}0" for i in range(stocks)], "features": [f"f{j}" for j in range(features)]}
    return Cache(path=tmp_path, manifest=manifest, x=x, y=y, y_z=standardise_targets(y, 5.0), valid=valid,
                 static=np.zeros((stocks, 2), dtype=np.int64))


def _val_rankic(cache: Cache, pred: np.ndarray, days: np.ndarray, k: int = 0) -> np.ndarray:
    target = np.where(cache.valid[days], cache.y[days, :, k], np.nan)
    return daily_ic(pred, target, min_stocks=20)[1]


# ---------------------------------------------------------------------------------------------- ridge


def test_ridge_equals_a_direct_least_squares_solve(tmp_path):
    cache = synthetic_cache(tmp_path, days=80, stocks=40, features=5)
    days = np.arange(10, 60)
    alpha = 3.0
    model = fit_ridge(cache, days, alpha=alpha)
    m = cache.valid[days] & np.isfinite(cache.y_z[days, :, 0])
    X = cache.x[days][m].astype(np.float64)
    y = cache.y_z[days, :, 0][m].astype(np.float64)
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    # ridge as an augmented least-squares problem: [Xc; sqrt(alpha) I] w = [yc; 0]
    A = np.vstack([Xc, math.sqrt(alpha) * np.eye(X.shape[1])])
    b = np.concatenate([yc, np.zeros(X.shape[1])])
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(model.coef, expected, rtol=1e-8, atol=1e-10)
    first = days[:3]
    pred = model.apply(cache, first)
    v = cache.valid[first]
    np.testing.assert_allclose(pred[v], (cache.x[first][v] - X.mean(axis=0)) @ expected + y.mean(), rtol=1e-8)
    assert np.isnan(pred[~v]).all()


def test_ridge_finds_a_linear_signal_of_the_last_day(tmp_path):
    cache = synthetic_cache(tmp_path, signal=1.0)
    split = make_split(cache, DATA)
    out = ridge_baseline(cache, split, alpha=1.0)
    assert out["rankic"] > 0.6 and out["ic"] > 0.6  # corr(signal, signal + noise) = 1/sqrt(2) ~ 0.71
    assert out["n_days"] == len(split.val) == 60 and out["train_days"] == len(split.train)
    assert out["ls_mean"] > 0 and out["horizon"] == 1
    json.dumps(out)  # JSON-safe


def test_ridge_on_pure_noise_is_inside_the_noise_band(tmp_path):
    cache = synthetic_cache(tmp_path, signal=0.0, seed=4)
    split = make_split(cache, DATA)
    pred = fit_ridge(cache, split.train).apply(cache, split.val)
    ric = _val_rankic(cache, pred, split.val)
    assert abs(np.nanmean(ric)) < noise_band(ric) < 0.05
    # the same on the noise horizon of a panel that does have a 1d signal
    cache = synthetic_cache(tmp_path, signal=1.0, seed=5)
    out = ridge_baseline(cache, make_split(cache, DATA), horizon_index=1)
    assert abs(out["rankic"]) < 0.04 and out["horizon"] == 5


def test_ridge_sees_only_the_last_day(tmp_path):
    """A relation with yesterday's features (features i.i.d. over time) is invisible to the baseline."""
    cache = synthetic_cache(tmp_path, signal=1.0, lag=1, seed=2)
    split = make_split(cache, DATA)
    pred = fit_ridge(cache, split.train).apply(cache, split.val)
    ric = _val_rankic(cache, pred, split.val)
    assert abs(np.nanmean(ric)) < noise_band(ric)


# ---------------------------------------------------------------------------------------------- oracle


def test_oracle_baseline_reads_the_demo_oracle_file(tmp_path):
    data = tmp_path / "demo.parquet"
    assert oracle_baseline(data) is None  # not demo data: no oracle
    oracle = {"oracle": {"target_1d": {"ic": 0.12, "rankic": 0.15, "ic_ir": 1.9, "rankic_ir": 2.3, "days": 749},
                         "target_5d": {"ic": 0.11, "rankic": 0.13, "ic_ir": 1.8, "rankic_ir": 2.0, "days": 745}}}
    Path(f"{data}.oracle.json").write_text(json.dumps(oracle))
    out = oracle_baseline(data)
    assert out["horizon"] == 1 and out["rankic"] == 0.15 and out["ic"] == 0.12 and out["days"] == 749
    assert out["per_horizon"]["5d"]["rankic"] == 0.13
    assert oracle_baseline({"source": str(data)}, horizon=5)["rankic"] == 0.13  # a cache manifest
    cache = synthetic_cache(tmp_path, days=10, stocks=5)
    cache.manifest["source"] = str(data)
    assert oracle_baseline(cache)["rankic"] == 0.15  # an opened cache
    assert oracle_baseline(data, horizon=20) is None
    assert oracle_baseline("s3://bucket/demo.parquet") is None
    Path(f"{data}.oracle.json").write_text("{not json")
    assert oracle_baseline(data) is None


def test_comparison_markdown_shows_model_ridge_oracle_and_control():
    md = comparison_markdown({"val_ic": 0.05, "val_rankic": 0.12, "val_rankic_ir": 1.5},
                             {"ic": 0.04, "rankic": 0.06, "rankic_ir": 0.9},
                             {"ic": 0.12, "rankic": 0.15, "rankic_ir": 2.3},
                             control={"rankic": 0.004, "band": 0.02, "inside": True})
    assert "| model | +0.0500 | +0.1200 | 1.500 | 80 % |" in md
    assert "| ridge (last-day features) | +0.0400 | +0.0600 | 0.900 | 40 % |" in md
    assert "inside the noise band" in md
    assert "n/a" in comparison_markdown(None, None, None)


# ---------------------------------------------------------------------------------------------- controls


def _row_key(row: np.ndarray) -> tuple:
    return tuple(np.nan_to_num(row, nan=-99.0))


def test_shuffled_targets_are_a_within_day_permutation(tmp_path):
    cache = synthetic_cache(tmp_path, days=30, stocks=50, invalid=0.2)
    y0, yz0 = cache.y.copy(), cache.y_z.copy()
    ctl = shuffled_target_cache(cache, seed=7)
    assert ctl.x is cache.x and ctl.valid is cache.valid  # features shared, zero copy
    np.testing.assert_array_equal(cache.y, y0)  # the original is untouched
    np.testing.assert_array_equal(cache.y_z, yz0)
    assert ctl.manifest["control"]["kind"] == "shuffled_targets" and ctl.fingerprint != cache.fingerprint
    moved = 0
    for d in range(30):
        v = cache.valid[d]
        # same multiset per day: y and y_z of a name travel together (rows of [y_1d, y_5d, y_z_1d, y_z_5d])
        rows0 = np.concatenate([cache.y[d][v], cache.y_z[d][v]], axis=1)
        rows1 = np.concatenate([ctl.y[d][v], ctl.y_z[d][v]], axis=1)
        assert sorted(map(_row_key, rows0)) == sorted(map(_row_key, rows1))
        # invalid cells stay where they are
        np.testing.assert_array_equal(ctl.y[d][~v], cache.y[d][~v])
        moved += int((np.nan_to_num(ctl.y[d][v, 0], nan=9) != np.nan_to_num(cache.y[d][v, 0], nan=9)).mean() > 0.8)
    assert moved >= 28  # a different order on (almost) every day
    # the order is a function of the seed; a day subset leaves the other days alone
    np.testing.assert_array_equal(shuffled_target_cache(cache, seed=7).y, ctl.y)
    part = shuffled_target_cache(cache, seed=7, days=np.arange(10))
    np.testing.assert_array_equal(part.y[10:], cache.y[10:])
    assert not np.array_equal(np.nan_to_num(part.y[:10]), np.nan_to_num(cache.y[:10]))


def test_noise_band_is_two_standard_errors_of_the_mean():
    x = np.array([0.1, -0.05, 0.02, np.nan, 0.07, -0.01])
    f = x[np.isfinite(x)]
    assert noise_band(x) == pytest.approx(2 * f.std(ddof=1) / math.sqrt(5))
    assert math.isnan(noise_band(np.array([0.1, np.nan])))
    v = control_verdict(x)
    assert v["n_days"] == 5 and v["band"] == v["noise_band"] and v["inside"] == (abs(f.mean()) <= v["band"])


def test_ridge_on_shuffled_targets_scores_inside_the_band_on_real_targets(tmp_path):
    """Control: trained on within-day shuffled targets, scored on the real validation targets.

    The panel has a real signal (the real ridge's val RankIC ~0.29). A ridge trained on shuffled
    targets is a random linear direction in feature space; it loads on the real signal by chance, so
    its true RankIC varies from seed to seed beyond the 2-SE `noise_band` of one fixed predictor
    (here 4 of 10 seeds would fall outside it). `null_band` measures that spread; the control verdict
    uses the wider of the two. Without signal in the features the two bands agree.
    """
    cache = synthetic_cache(tmp_path, signal=0.3, features=40, stocks=120, seed=11)
    split = make_split(cache, DATA)
    real = np.nanmean(_val_rankic(cache, fit_ridge(cache, split.train).apply(cache, split.val), split.val))
    nb = null_band(cache, split.train, split.val, n_draws=48)
    assert real > 0.2 and real > 2 * nb  # the real signal is well outside the band
    verdicts, means, sampling = [], [], []
    for seed in range(10):
        ctl = shuffled_target_cache(cache, seed=seed, days=split.train)
        ric = _val_rankic(cache, fit_ridge(ctl, split.train).apply(cache, split.val), split.val)
        v = control_verdict(ric, nb)
        verdicts.append(v["inside"])
        means.append(v["rankic"])
        sampling.append(v["noise_band"])
        assert abs(v["rankic"]) < real / 2
    assert sum(verdicts) >= 9  # ~95 % expected
    assert abs(np.mean(means)) < 2 * np.std(means, ddof=1) / math.sqrt(len(means))  # no systematic edge
    assert nb > 2 * np.mean(sampling)  # chance loading on real signal dominates the sampling noise

    flat = synthetic_cache(tmp_path, signal=0.0, features=40, stocks=120, seed=11)
    ctl = shuffled_target_cache(flat, seed=0, days=split.train)
    ric = _val_rankic(flat, fit_ridge(ctl, split.train).apply(flat, split.val), split.val)
    v = control_verdict(ric, null_band(flat, split.train, split.val, n_draws=48))
    assert v["inside"] and 0.6 < v["null_band"] / v["noise_band"] < 1.6


def test_dryrun_helpers_ridge_oracle_control_and_markdown(tmp_path):
    """The two calls the dry run makes: `control_result` and `dryrun_baselines`."""
    from atft_core.evaluate.baselines import dryrun_baselines
    from atft_core.evaluate.controls import control_result

    cache = synthetic_cache(tmp_path, signal=0.3, features=10, seed=3)
    Path(cache.manifest["source"] + ".oracle.json").write_text(json.dumps(
        {"oracle": {"target_1d": {"ic": 0.3, "rankic": 0.32, "ic_ir": 3.0, "rankic_ir": 3.2, "days": 200}}}))
    split = make_split(cache, DATA)
    ctl = shuffled_target_cache(cache, seed=1, days=split.train)
    pred = fit_ridge(ctl, split.train).apply(cache, split.val)[:, :, None]  # [days, S, H] as the trainer's
    control = control_result(cache, split, pred, split.val, seed=1, min_stocks=20)
    assert control["inside"] and control["seed"] == 1 and control["n_days"] == len(split.val)
    assert control["band"] == max(control["noise_band"], control["null_band"])
    out = dryrun_baselines(cache, split, {"val_ic": 0.2, "val_rankic": 0.25, "val_rankic_ir": 2.0}, control=control)
    assert out["ridge"]["rankic"] > 0.2 and out["oracle"]["rankic"] == 0.32 and out["control"] is control
    assert "| model | +0.2000 | +0.2500 | 2.000 | 78 % |" in out["markdown"]
    assert "ridge (last-day features)" in out["markdown"] and "inside the noise band" in out["markdown"]
    json.dumps({k: v for k, v in out.items()})  # gate.json-ready
    empty = dataclasses.replace(split, train=split.train[:0])
    few = dryrun_baselines(cache, empty, None)
    assert few["ridge"] is None and "n/a" in few["markdown"]  # a failed baseline never crashes the dry run
