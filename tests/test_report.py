"""Signal report (atft_core.evaluate.report, `atft report`) and the cache build's look-ahead check.

The report's numbers are checked against an independent per-day computation (pandas groupby +
scipy, plain Python sets) on a synthetic predictions file with ties, missing values, a day below
min_stocks and a day with a constant prediction.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from scipy import stats

from atft_core.data.cache.build import build_cache
from atft_core.evaluate.report import build_report, equity_curve, max_drawdown, turnover
from flows.cli import main

MIN_STOCKS = 20


def write_predictions(path: Path, days: int = 45, stocks: int = 40, seed: int = 0) -> Path:
    """val_predictions-like file: pred_{1,5}d = target + noise, with ties, nulls, missing rows."""
    rng = np.random.default_rng(seed)
    dates = np.busday_offset("2023-01-02", np.arange(days), roll="forward").astype("datetime64[D]")
    codes = np.array([f"{1300 + i}0" for i in range(stocks)])
    D, C = np.meshgrid(np.arange(days), np.arange(stocks), indexing="ij")
    cols = {"Date": dates[D.ravel()], "Code": codes[C.ravel()]}
    for h in (1, 5):
        target = 0.02 * rng.standard_normal((days, stocks))
        pred = 0.3 * target / 0.02 + rng.standard_normal((days, stocks))
        pred[::3] = np.round(pred[::3] * 2) / 2  # every third day: heavy ties (boundary ties in the deciles)
        target[5] = np.round(target[5], 2)  # ties in the target too
        pred[7] = 0.25  # constant prediction: IC / RankIC undefined, long-short exactly 0
        pred[rng.random((days, stocks)) < 0.08] = np.nan  # missing predictions
        target[rng.random((days, stocks)) < 0.05] = np.nan  # unknown targets
        cols[f"pred_{h}d"] = pred.ravel()
        cols[f"target_{h}d"] = target.ravel()
    df = pl.DataFrame(cols).with_columns(pl.col(pl.Float64).fill_nan(None))
    keep = rng.random(df.height) > 0.04  # halted names: no row
    keep[np.asarray(D.ravel() == 11) & (np.asarray(C.ravel()) >= 15)] = False  # day 11: 15 names < min_stocks
    df = df.filter(pl.Series(keep)).sample(fraction=1.0, shuffle=True, seed=1)  # row order must not matter
    df.write_parquet(path)
    return path


def _leg_mean(p: np.ndarray, t: np.ndarray, n_q: int, top: bool) -> float:
    """Mean target of the n_q highest (lowest) predictions, a tie group at the boundary split evenly."""
    remaining, total = n_q, 0.0
    for value in sorted(set(p.tolist()), reverse=top):
        group = t[p == value]
        k = min(len(group), remaining)
        total += k * group.mean()
        remaining -= k
        if remaining == 0:
            break
    return total / n_q


def independent(path: Path, horizon: int) -> dict:
    """Everything the report states, computed day by day with pandas / scipy / Python sets."""
    df = pd.read_parquet(path)
    df = df[["Date", "Code", f"pred_{horizon}d", f"target_{horizon}d"]].rename(
        columns={f"pred_{horizon}d": "p", f"target_{horizon}d": "t"})
    out = {k: [] for k in ("date", "ic", "rankic", "ls", "top", "bottom", "dec")}
    for date, day in sorted(df.groupby("Date"), key=lambda kv: kv[0]):
        day = day.dropna(subset=["p", "t"])
        p, t, codes = day["p"].to_numpy(), day["t"].to_numpy(), day["Code"].to_numpy()
        n = len(p)
        out["date"].append(str(pd.Timestamp(date).date()))
        if n < MIN_STOCKS:
            for k in ("ic", "rankic", "ls"):
                out[k].append(math.nan)
            out["top"].append(None)
            out["bottom"].append(None)
            out["dec"].append([math.nan] * 10)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            const = np.ptp(p) == 0 or np.ptp(t) == 0
            out["ic"].append(math.nan if const else stats.pearsonr(p, t)[0])
            out["rankic"].append(math.nan if const else stats.spearmanr(p, t)[0])
        n_q = max(1, math.floor(n * 0.1 + 1e-9))
        out["ls"].append(_leg_mean(p, t, n_q, True) - _leg_mean(p, t, n_q, False))
        bucket = np.floor(10 * (stats.rankdata(p, method="average") - 1) / n).astype(int)
        out["top"].append(set(codes[bucket == 9]))
        out["bottom"].append(set(codes[bucket == 0]))
        out["dec"].append([t[bucket == b].mean() if (bucket == b).any() else math.nan for b in range(10)])
    res = {k: np.array(out[k], dtype=float) for k in ("ic", "rankic", "ls")}
    res["date"] = out["date"]
    res["deciles"] = np.nanmean(np.array(out["dec"]), axis=0)
    for leg in ("top", "bottom"):
        sets = out[leg]
        res[f"turnover_{leg}"] = np.array([math.nan] + [
            1 - len(a & b) / len(a) if a is not None and b is not None and len(a) else math.nan
            for b, a in itertools.pairwise(sets)])
    rate = pd.Series(res["ls"] / horizon)
    equity = (1 + rate.fillna(0.0)).cumprod()
    res["equity"] = equity.to_numpy()
    curve = pd.concat([pd.Series([1.0]), equity], ignore_index=True)
    res["max_drawdown"] = float((1 - curve / curve.cummax()).max())
    res["annualised_return"] = rate.mean() * 252  # pandas skips NaN
    res["sharpe"] = rate.mean() / rate.std(ddof=1) * math.sqrt(252)
    res["ic_rolling"] = pd.Series(res["ic"]).rolling(20, min_periods=10).mean().to_numpy()
    res["rankic_rolling"] = pd.Series(res["rankic"]).rolling(20, min_periods=10).mean().to_numpy()
    return res


def _arr(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


@pytest.mark.parametrize("horizon", [1, 5])
def test_report_equals_an_independent_computation(tmp_path, horizon):
    path = write_predictions(tmp_path / "val_predictions.parquet")
    rep = build_report(path, tmp_path / "out", horizon=horizon, min_stocks=MIN_STOCKS)
    ref = independent(path, horizon)
    daily = rep["daily"]
    assert daily["date"] == ref["date"]
    close = {"rtol": 1e-9, "atol": 1e-12, "equal_nan": True}
    for key, ref_key in (("ic", "ic"), ("rankic", "rankic"), ("long_short", "ls"), ("equity", "equity"),
                         ("ic_rolling", "ic_rolling"), ("rankic_rolling", "rankic_rolling"),
                         ("turnover_top", "turnover_top"), ("turnover_bottom", "turnover_bottom")):
        np.testing.assert_allclose(_arr(daily[key]), ref[ref_key], err_msg=key, **close)
    # the fixture's special days really are special
    assert math.isnan(ref["rankic"][11]) and math.isnan(ref["rankic"][7]) and ref["ls"][7] == 0.0
    assert np.isfinite(ref["turnover_top"]).sum() >= 35

    s = rep["summary"]
    for key, ref_key in (("ic", "ic"), ("rankic", "rankic"), ("ls_mean", "ls")):
        assert s[key] == pytest.approx(np.nanmean(ref[ref_key]), rel=1e-9)
    assert s["rankic_ir"] == pytest.approx(np.nanmean(ref["rankic"]) / np.nanstd(ref["rankic"], ddof=1), rel=1e-9)
    assert s["n_days"] == np.isfinite(ref["rankic"]).sum() == len(ref["date"]) - 2
    ls = rep["long_short"]
    assert ls["annualised_return"] == pytest.approx(ref["annualised_return"], rel=1e-9)
    assert ls["sharpe"] == pytest.approx(ref["sharpe"], rel=1e-9) == pytest.approx(s["ls_sharpe"], rel=1e-9)
    assert ls["max_drawdown"] == pytest.approx(ref["max_drawdown"], rel=1e-9, abs=1e-15)
    assert ls["total_return"] == pytest.approx(ref["equity"][-1] - 1, rel=1e-9)
    np.testing.assert_allclose(_arr(rep["deciles"]["mean_target"]), ref["deciles"], rtol=1e-9)
    assert rep["turnover"]["top"] == pytest.approx(np.nanmean(ref["turnover_top"]), rel=1e-9)
    assert rep["turnover"]["bottom"] == pytest.approx(np.nanmean(ref["turnover_bottom"]), rel=1e-9)

    # report.json holds the same numbers, and the plots are real PNGs
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["summary"] == s and on_disk["long_short"] == ls
    for name in ("ic_series.png", "ic_hist.png", "deciles.png", "equity.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_drawdown_and_equity_on_hand_made_cases():
    r = np.array([0.1, -0.2, 0.05, -0.1, 0.3])
    eq = equity_curve(r)
    np.testing.assert_allclose(eq, [1.1, 0.88, 0.924, 0.8316, 1.08108])
    assert max_drawdown(eq) == pytest.approx(1 - 0.8316 / 1.1)  # peak 1.1 -> trough 0.8316
    assert max_drawdown(equity_curve([0.01, 0.02, 0.0])) == 0.0  # never below its peak
    assert max_drawdown(equity_curve([-0.1, 0.05])) == pytest.approx(0.1)  # a fall from the start (1.0)
    np.testing.assert_allclose(equity_curve([0.1, np.nan, 0.1]), [1.1, 1.1, 1.21])  # NaN day is flat


def test_turnover_on_hand_made_cases():
    members = np.array([
        [1, 1, 1, 1, 0, 0],  # day 0: {0,1,2,3}
        [1, 1, 0, 0, 1, 1],  # day 1: {0,1,4,5}: 2 of 4 new -> 0.5
        [1, 1, 0, 0, 1, 1],  # day 2: same set -> 0
        [0, 0, 1, 0, 0, 0],  # day 3: {2}: all new -> 1
        [0, 0, 1, 1, 0, 0],  # day 4: not scored
        [0, 0, 1, 1, 1, 0],  # day 5: previous day not scored -> NaN
    ], dtype=bool)
    ok = np.array([True, True, True, True, False, True])
    np.testing.assert_allclose(turnover(members, ok), [np.nan, 0.5, 0.0, 1.0, np.nan, np.nan], equal_nan=True)


def test_cli_report_and_its_input_errors(tmp_path, capsys):
    path = write_predictions(tmp_path / "val_predictions.parquet", days=25, stocks=30)
    assert main(["report", "--predictions", str(path), "--output-dir", str(tmp_path / "r")]) == 0
    assert "RankIC" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "report.json").read_text())["horizon"] == 1

    assert main(["report", "--predictions", str(tmp_path / "nope.parquet"), "--output-dir", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.parquet"
    junk.write_text("Date,Code\n")
    assert main(["report", "--predictions", str(junk), "--output-dir", str(tmp_path / "x")]) == 2
    assert "not a readable parquet" in capsys.readouterr().err
    assert main(["report", "--predictions", str(path), "--output-dir", str(tmp_path / "x"), "--horizon", "3"]) == 2
    err = capsys.readouterr().err
    assert "pred_3d" in err and "1d, 5d" in err
    dup = tmp_path / "dup.parquet"
    df = pl.read_parquet(path)
    pl.concat([df, df.head(2)]).write_parquet(dup)
    assert main(["report", "--predictions", str(dup), "--output-dir", str(tmp_path / "x")]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a bad input


def test_cache_build_flags_a_planted_look_ahead_column_by_name(tmp_path):
    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo

    demo = tmp_path / "demo.parquet"
    generate_demo(demo, DemoConfig(stocks=60, days=120, features=16, seed=3, market="planted"))
    df = pl.read_parquet(demo)
    rng = np.random.default_rng(0)
    noise = 0.002 * rng.standard_normal(df.height)  # target_1d has a daily spread of ~2 %
    df = df.with_columns((pl.col("target_1d") + pl.Series(noise)).cast(pl.Float32).alias("peek"))
    leaky = tmp_path / "leaky.parquet"
    df.write_parquet(leaky)

    build = build_cache(leaky, tmp_path / "cache", progress=False)
    assert build.summary["leak_suspects"] == ["peek"]  # by name, and nothing else (the real signals are legit)
    assert any("'peek'" in w and "look-ahead" in w and "target_1d" in w for w in build.warnings)
    manifest = json.loads((build.path / "manifest.json").read_text())
    suspect = manifest["leak_suspects"][0]
    assert suspect["feature"] == "peek" and suspect["horizon"] == 1 and suspect["rankic"] > 0.9

    clean = build_cache(demo, tmp_path / "cache", progress=False)
    assert clean.summary["leak_suspects"] == []
