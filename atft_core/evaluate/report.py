"""Signal report of a prediction file, the way quant researchers read a signal (alphalens-style).

`build_report(predictions_path, output_dir)` reads `val_predictions.parquet` (Date, Code,
pred_{h}d, target_{h}d, as written by the dry run), pivots it once to dense [days, stocks] grids
and writes ``report.json`` plus PNG plots:

- daily IC and RankIC with their 20-day rolling means (``ic_series.png``), and their histogram
  (``ic_hist.png``);
- mean target per prediction decile (``deciles.png``);
- the cumulative top-minus-bottom decile return (``equity.png``) with its annualised return,
  Sharpe / IR and maximum drawdown;
- turnover of the top and bottom deciles.

Every per-day number comes from `atft_core.ic` (the one definition of IC, RankIC and
long-short); the only things computed here are what it has no notion of (deciles,
equity curve, drawdown, turnover), all vectorised over the grid.

Conventions:
- a day counts when at least ``min_stocks`` names have both a prediction and a target (as metrics);
- decile of a name = floor(10 * (r - 1) / n), r its average rank (1..n) among the day's scored
  names: tied predictions share a decile; "mean target per decile" is the mean over days of each
  day's decile mean;
- the long-short series is `atft_core.ic.long_short` (top 10 % minus bottom 10 %, ties at the leg
  boundaries split evenly); for a horizon of h days it is an h-day return, turned into a daily rate
  ``ls / h`` (the return of a book rebalanced 1/h each day, as alphalens does) before compounding:
  equity_t = prod_{u<=t} (1 + rate_u), with days that have no long-short counted as flat;
- annualised return = mean daily rate x 252; Sharpe = mean / std x sqrt(252) (= `metrics`'
  ``ls_sharpe``); IR = mean / std, not annualised; max drawdown = the largest fall of the equity
  curve from its running peak (starting from 1), as a positive fraction;
- turnover of a decile on day t = share of its names on day t that were not in it on the previous
  day of the file (both days scored), 1 - |A_t & A_(t-1)| / |A_t|.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from atft_core.errors import DatasetError, Problem
from atft_core.evaluate.metrics import TRADING_DAYS_PER_YEAR, summarize
from atft_core.ic import daily_ic, long_short, rank_average

N_BUCKETS = 10
ROLLING_DAYS = 20
REPORT_FILE = "report.json"


@dataclass
class PredictionGrid:
    dates: list[str]  # [D] sorted ISO dates
    codes: list[str]  # [S] sorted
    pred: np.ndarray  # [D, S] float64, NaN where missing
    target: np.ndarray  # [D, S] float64, NaN where missing
    horizon: int
    rows: int


def load_predictions(path: str | Path, horizon: int = 1) -> PredictionGrid:
    """Read a predictions parquet and pivot one horizon to dense [D, S] grids (one scatter, no loop).

    Raises `DatasetError` naming the file and the problem (missing file, not parquet, missing
    columns with the horizons that are present, no rows, duplicate (Date, Code)).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "does not exist: `atft dryrun` writes val_predictions.parquet in its run folder")
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DatasetError(path, f"not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None
    pcol, tcol = f"pred_{horizon}d", f"target_{horizon}d"
    have = sorted({int(c[5:-1]) for c in schema if c.startswith("pred_") and c.endswith("d") and c[5:-1].isdigit()})
    problems = [Problem(c, "missing") for c in ("Date", "Code") if c not in schema]
    for c in (pcol, tcol):
        if c not in schema:
            problems.append(Problem(c, f"missing (horizons with predictions in this file: "
                                       f"{', '.join(f'{h}d' for h in have) or 'none'}); pass --horizon"))
    if problems:
        raise DatasetError(path, problems)
    df = pl.read_parquet(path, columns=["Date", "Code", pcol, tcol])
    if df.height == 0:
        raise DatasetError(path, "zero rows")
    date_col = df["Date"]
    if date_col.dtype.is_temporal():
        date_col = date_col.cast(pl.Date)  # a Datetime column: one trading day per calendar date
    dates_raw = date_col.cast(pl.String).to_numpy().astype(str)
    codes_raw = df["Code"].cast(pl.String).to_numpy().astype(str)
    dates, d_idx = np.unique(dates_raw, return_inverse=True)
    codes, s_idx = np.unique(codes_raw, return_inverse=True)
    flat = d_idx.astype(np.int64) * len(codes) + s_idx
    if len(np.unique(flat)) != len(flat):
        raise DatasetError(path, Problem("Date, Code", "duplicate (Date, Code) rows"))
    grids = []
    for c in (pcol, tcol):
        v = df[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
        g = np.full((len(dates), len(codes)), np.nan)
        g[d_idx, s_idx] = np.where(np.isfinite(v), v, np.nan)
        grids.append(g)
    return PredictionGrid(dates=[str(d) for d in dates], codes=[str(c) for c in codes], pred=grids[0],
                          target=grids[1], horizon=horizon, rows=df.height)


def decile_buckets(pred: np.ndarray, target: np.ndarray, min_stocks: int = 20,
                   n_buckets: int = N_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Prediction bucket of every scored cell: (buckets [D, S] int, -1 where not scored; day_ok [D]).

    bucket = floor(n_buckets * (r - 1) / n) with r the average rank among the day's n scored names
    (prediction and target both finite); ties share a bucket. Days with n < max(min_stocks, 2) are
    not scored (all -1).
    """
    m = np.isfinite(pred) & np.isfinite(target)
    n = m.sum(axis=1)
    day_ok = n >= max(min_stocks, 2)
    r = rank_average(pred, m)
    with np.errstate(invalid="ignore"):
        b = np.floor(n_buckets * (r - 1.0) / np.maximum(n, 1)[:, None])
    b = np.clip(np.nan_to_num(b, nan=-1.0), -1, n_buckets - 1).astype(np.int64)
    b[~(m & day_ok[:, None])] = -1
    return b, day_ok


def decile_means(target: np.ndarray, buckets: np.ndarray, n_buckets: int = N_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """(mean over days of each day's bucket-mean target [n_buckets], mean names per bucket [n_buckets])."""
    D = buckets.shape[0]
    sel = buckets >= 0
    idx = (np.arange(D)[:, None] * n_buckets + buckets)[sel]
    sums = np.bincount(idx, weights=target[sel], minlength=D * n_buckets).reshape(D, n_buckets)
    cnt = np.bincount(idx, minlength=D * n_buckets).reshape(D, n_buckets).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        daily = np.where(cnt > 0, sums / cnt, np.nan)
    has = np.isfinite(daily).sum(axis=0)
    mean = np.where(has > 0, np.nansum(daily, axis=0) / np.maximum(has, 1), np.nan)
    days_scored = (cnt.sum(axis=1) > 0).sum()
    return mean, cnt.sum(axis=0) / max(int(days_scored), 1)


def turnover(members: np.ndarray, day_ok: np.ndarray) -> np.ndarray:
    """[D] share of day t's members that were not members on day t-1; NaN for day 0 and unscored pairs."""
    members = np.asarray(members, dtype=bool)
    out = np.full(members.shape[0], np.nan)
    if members.shape[0] < 2:
        return out
    size = members[1:].sum(axis=1)
    kept = (members[1:] & members[:-1]).sum(axis=1)
    ok = day_ok[1:] & day_ok[:-1] & (size > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.where(ok, 1.0 - kept / np.maximum(size, 1), np.nan)
    return out


def equity_curve(daily_returns: np.ndarray) -> np.ndarray:
    """Compounded equity (starting from 1, not included) of a daily return series; NaN days are flat."""
    r = np.nan_to_num(np.asarray(daily_returns, dtype=np.float64), nan=0.0)
    return np.cumprod(1.0 + r)


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from the running peak (the curve starts at 1), as a positive fraction; 0 if none."""
    eq = np.concatenate([[1.0], np.asarray(equity, dtype=np.float64)])
    peak = np.maximum.accumulate(eq)
    return float(np.max(1.0 - eq / peak))


def rolling_mean(x: np.ndarray, window: int = ROLLING_DAYS, min_periods: int | None = None) -> np.ndarray:
    """Trailing mean over `window` days of the finite values; NaN with fewer than `min_periods`
    (default window // 2) finite values in the window (pandas ``rolling(window, min_periods).mean()``)."""
    x = np.asarray(x, dtype=np.float64)
    min_periods = max(1, window // 2) if min_periods is None else min_periods
    ok = np.isfinite(x)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    t = np.arange(1, len(x) + 1)
    lo = np.maximum(t - window, 0)
    s, c = cs[t] - cs[lo], cn[t] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c >= min_periods, s / np.maximum(c, 1), np.nan)


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series(a: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def build_report(predictions_path: str | Path, output_dir: str | Path, horizon: int = 1, min_stocks: int = 20,
                 quantile: float = 0.1, plots: bool = True) -> dict[str, Any]:
    """Compute the signal report of one horizon, write ``report.json`` (+ PNGs) into `output_dir`.

    Returns the report dict (the content of report.json; NaN as None), whose ``files`` maps each
    written file's name to its path.
    """
    g = load_predictions(predictions_path, horizon)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pred, target = g.pred, g.target

    summary = summarize(pred, target, min_stocks=min_stocks, quantile=quantile)
    ic, rankic = daily_ic(pred, target, min_stocks=min_stocks)
    ls = long_short(pred, target, quantile=quantile, min_stocks=min_stocks)
    rate = ls / horizon
    equity = equity_curve(rate)
    fin = rate[np.isfinite(rate)]
    sd = float(fin.std(ddof=1)) if fin.size >= 2 else float("nan")
    mean_rate = float(fin.mean()) if fin.size else float("nan")
    ir = mean_rate / sd if sd > 0 else float("nan")

    buckets, day_ok = decile_buckets(pred, target, min_stocks)
    dec_mean, dec_names = decile_means(target, buckets)
    to_top = turnover(buckets == N_BUCKETS - 1, day_ok)
    to_bottom = turnover(buckets == 0, day_ok)

    def nanmean(a: np.ndarray) -> float | None:
        a = a[np.isfinite(a)]
        return float(a.mean()) if a.size else None

    report: dict[str, Any] = {
        "predictions": str(predictions_path), "horizon": horizon, "min_stocks": min_stocks, "quantile": quantile,
        "rows": g.rows, "days": len(g.dates), "stocks": len(g.codes),
        "first_date": g.dates[0], "last_date": g.dates[-1], "days_scored": int(day_ok.sum()),
        "summary": summary.to_dict(),
        "long_short": {
            "mean_daily": _f(np.nanmean(ls)) if np.isfinite(ls).any() else None,
            "mean_daily_rate": _f(mean_rate),
            "annualised_return": _f(mean_rate * TRADING_DAYS_PER_YEAR),
            "sharpe": _f(ir * math.sqrt(TRADING_DAYS_PER_YEAR)),
            "ir": _f(ir),
            "max_drawdown": _f(max_drawdown(equity)),
            "total_return": _f(equity[-1] - 1.0) if len(equity) else None,
            "days": int(fin.size),
        },
        "deciles": {"mean_target": _series(dec_mean), "mean_names": _series(dec_names)},
        "turnover": {"top": nanmean(to_top), "bottom": nanmean(to_bottom)},
        "daily": {
            "date": g.dates, "ic": _series(ic), "rankic": _series(rankic),
            "ic_rolling": _series(rolling_mean(ic)), "rankic_rolling": _series(rolling_mean(rankic)),
            "long_short": _series(ls), "equity": _series(equity),
            "turnover_top": _series(to_top), "turnover_bottom": _series(to_bottom),
        },
        "conventions": __doc__.split("Conventions:", 1)[1].strip(),
    }
    files: dict[str, str] = {}
    if plots:
        from atft_core.evaluate import plots as P

        try:
            dates = np.array(g.dates, dtype="datetime64[D]")
        except ValueError:  # not ISO dates: plot against the day's position
            dates = np.arange(len(g.dates))
        title = f"{horizon}d"
        files["ic_series.png"] = str(P.plot_ic_series(dates, ic, rankic, rolling_mean(ic), rolling_mean(rankic),
                                                      output_dir / "ic_series.png", title=title))
        files["ic_hist.png"] = str(P.plot_ic_histogram(ic, rankic, output_dir / "ic_hist.png", title=title))
        files["deciles.png"] = str(P.plot_decile_means(dec_mean, output_dir / "deciles.png", title=title))
        files["equity.png"] = str(P.plot_equity_curve(dates, equity, output_dir / "equity.png",
                                                      title=title, stats=report["long_short"]))
    path = output_dir / REPORT_FILE
    files[REPORT_FILE] = str(path)
    report["files"] = files
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """Short markdown summary of a report (for a Prefect artifact or the gate markdown)."""
    s, ls, to = report["summary"], report["long_short"], report["turnover"]

    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    dec = " ".join(fmt(v, "+.4f") for v in report["deciles"]["mean_target"])
    return "\n".join([
        (f"### Signal report ({report['horizon']}d, {report['days_scored']} days, {report['first_date']} .. "
         f"{report['last_date']})"),
        "",
        "| IC | IC IR | RankIC | RankIC IR | L/S ann. return | L/S Sharpe | max drawdown | turnover top / bottom |",
        "|---|---|---|---|---|---|---|---|",
        (f"| {fmt(s['ic'], '+.4f')} | {fmt(s['ic_ir'], '.3f')} | {fmt(s['rankic'], '+.4f')} | "
         f"{fmt(s['rankic_ir'], '.3f')} | {fmt(ls['annualised_return'], '+.2%')} | {fmt(ls['sharpe'], '.2f')} | "
         f"{fmt(ls['max_drawdown'], '.2%')} | {fmt(to['top'], '.2f')} / {fmt(to['bottom'], '.2f')} |"),
        "",
        f"Mean target per prediction decile (low -> high): {dec}",
        "",
    ])
