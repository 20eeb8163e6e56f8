"""Reference points for the model's validation score: a ridge baseline and the demo oracle.

- `RidgeModel` (a `atft_core.evaluate.predictor.Predictor`): a linear model on the last day's
  features (``x[t]`` of each stock, not the window), fit per horizon on the training days of the
  same walk-forward split. `ridge_baseline` scores it with the one metric definition
  (`atft_core.evaluate.metrics.summarize`). A deep model that cannot beat it has learnt nothing a
  linear regression would not.
- `DemoOracle` (a `Predictor` too) and `oracle_on_days`: on the demo data, the score of the planted
  expected return itself (`PATH.oracle.parquet`, written by `atft_core.data.demo.generate`): the best any
  model can reach. `oracle_baseline` reads the all-days summary (`PATH.oracle.json`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atft_core.data.cache.store import Cache
from atft_core.data.split import Split
from atft_core.evaluate.metrics import summarize

log = logging.getLogger("atft_core.evaluate.baselines")

_CHUNK_VALUES = 1 << 24  # feature values (days x stocks x features) read at once: ~130 MB as float64


def chunk_days(cache: Cache) -> int:
    """Days per chunk so that one chunk of features stays near `_CHUNK_VALUES` values.

    The whole demo panel is one chunk; on the full panel (4,000 stocks x 400 features) it is 10 days.
    """
    _, S, F = cache.x.shape
    return max(1, _CHUNK_VALUES // max(1, S * F))


@dataclass
class RidgeFit:
    """One horizon's fitted linear map (`fit_ridge`); `RidgeModel` holds one per horizon."""

    coef: np.ndarray  # [F] float64
    intercept: float
    feature_mean: np.ndarray  # [F]
    n_rows: int

    def apply(self, cache: Cache, days: np.ndarray) -> np.ndarray:
        """[len(days), S] float64 scores from each day's own features; NaN where the stock had no row."""
        days = np.asarray(days, dtype=np.int64)
        out = np.full((len(days), cache.x.shape[1]), np.nan, dtype=np.float64)
        step = chunk_days(cache)
        for a in range(0, len(days), step):
            d = days[a:a + step]
            x = np.asarray(cache.x[d], dtype=np.float64)  # [c, S, F]
            p = (x - self.feature_mean) @ self.coef + self.intercept
            out[a:a + len(d)] = np.where(cache.valid[d], p, np.nan)
        return out


@dataclass
class RidgeModel:
    """Ridge on the last day's features as a `Predictor`: one closed-form fit per horizon.

    `fit` solves `fit_ridge` for each horizon index in `horizon_indices` (None: every horizon of the
    cache; one F x F solve each, cheap) on ``split.train``, thinned to `max_train_days` evenly spaced
    days when set. `predict` gives ``[len(days), S, H]`` float64, NaN where the stock had no row and
    in the horizons left out of `horizon_indices`.
    """

    alpha: float = 1.0
    max_train_days: int | None = None  # None = every training day
    horizon_indices: Sequence[int] | None = None  # None = every horizon of the cache
    fits: dict[int, RidgeFit] = field(default_factory=dict)  # horizon index -> its fit, set by `fit`
    train_days: int = 0  # training days the fits used

    def fit(self, cache: Cache, split: Split) -> RidgeModel:
        train = np.asarray(split.train)
        if self.max_train_days is not None and len(train) > self.max_train_days:
            train = train[np.unique(np.linspace(0, len(train) - 1, num=self.max_train_days).round().astype(int))]
        which = range(len(cache.horizons)) if self.horizon_indices is None else self.horizon_indices
        self.fits = {int(k): fit_ridge(cache, train, self.alpha, int(k)) for k in which}
        self.train_days = len(train)
        return self

    def predict(self, cache: Cache, days: np.ndarray) -> np.ndarray:
        if not self.fits:
            raise ValueError("ridge model is not fitted yet: call fit(cache, split) first")
        out = np.full((len(days), cache.x.shape[1], len(cache.horizons)), np.nan, dtype=np.float64)
        for k, one in self.fits.items():
            out[:, :, k] = one.apply(cache, days)
        return out


@dataclass
class Gram:
    """Centred normal equations of ``y_z[t, s, h]`` on ``x[t, s, :]`` over a set of days."""

    xx: np.ndarray  # [F, F] centred X'X
    xy: np.ndarray  # [F] centred X'y
    x_mean: np.ndarray  # [F]
    y_mean: float
    n: int


def centred_gram(cache: Cache, days: np.ndarray, horizon_index: int = 0) -> Gram:
    """X'X and X'y over the (day, stock) cells of `days` that are valid with a known target.

    Accumulated over chunks of days (`chunk_days`), so memory is O(F^2 + chunk) whatever the panel size.
    """
    days = np.asarray(days, dtype=np.int64)
    F = cache.x.shape[2]
    sx = np.zeros(F)
    sy = 0.0
    sxx = np.zeros((F, F))
    sxy = np.zeros(F)
    n = 0
    step = chunk_days(cache)
    for a in range(0, len(days), step):
        d = days[a:a + step]
        yz = cache.y_z[d, :, horizon_index]
        m = cache.valid[d] & np.isfinite(yz)
        x = np.asarray(cache.x[d][m], dtype=np.float64)  # [rows, F]
        y = yz[m].astype(np.float64)
        n += len(y)
        sx += x.sum(axis=0)
        sy += y.sum()
        sxx += x.T @ x
        sxy += x.T @ y
    if n < 2:
        raise ValueError(f"ridge baseline: only {n} training rows with a known target")
    mx, my = sx / n, sy / n
    return Gram(xx=sxx - n * np.outer(mx, mx), xy=sxy - n * mx * my, x_mean=mx, y_mean=float(my), n=n)


def fit_ridge(cache: Cache, days: np.ndarray, alpha: float = 1.0, horizon_index: int = 0) -> RidgeFit:
    """Closed-form ridge of the standardised target ``y_z[t, s, h]`` on ``x[t, s, :]`` over `days`.

    Rows are the (day, stock) cells that are valid with a known target. The intercept is not
    penalised (features and target are centred first); the solve is one F x F system.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    g = centred_gram(cache, days, horizon_index)
    F = g.xx.shape[0]
    coef = np.linalg.solve(g.xx + alpha * np.eye(F), g.xy) if F else np.zeros(0)
    return RidgeFit(coef=coef, intercept=g.y_mean, feature_mean=g.x_mean, n_rows=g.n)


def eval_days(split: Split) -> np.ndarray:
    """The days comparisons are scored on: the held-out test days, or validation when there are none."""
    return np.asarray(split.test if len(split.test) else split.val)


def ridge_baseline(cache: Cache, split: Split, alpha: float = 1.0, horizon_index: int = 0,
                   min_stocks: int = 20, quantile: float = 0.1, max_train_days: int | None = None,
                   days: np.ndarray | None = None) -> dict[str, Any]:
    """Ridge on the last day's features, fit on ``split.train``, scored on `days` (default `eval_days`).

    Returns the validation metrics of `metrics.summarize` (ic, ic_ir, rankic, rankic_ir, ls_mean,
    ls_sharpe, n_days; NaN as None) against the raw forward returns of horizon `horizon_index`, plus
    what was fit (alpha, horizon, days, rows, the largest coefficients by magnitude).

    `max_train_days` (None = all) fits on that many evenly spaced training days: on the full panel
    250 days x 4,000 names are a million rows, plenty for a few hundred coefficients, at 1/8 the cost.
    """
    ridge = RidgeModel(alpha, max_train_days, horizon_indices=(horizon_index,)).fit(cache, split)
    model = ridge.fits[horizon_index]
    days = eval_days(split) if days is None else np.asarray(days)
    pred = np.ascontiguousarray(ridge.predict(cache, days)[:, :, horizon_index])
    target = np.where(cache.valid[days], cache.y[days, :, horizon_index], np.nan)
    out: dict[str, Any] = summarize(pred, target, min_stocks=min_stocks, quantile=quantile).to_dict()
    names = cache.feature_names
    top = np.argsort(-np.abs(model.coef))[:5]
    out.update({
        "model": "ridge(last-day features)", "alpha": alpha, "horizon": int(cache.horizons[horizon_index]),
        "train_days": ridge.train_days, "val_days": len(split.val), "eval_days": len(days), "train_rows": model.n_rows,
        "top_coefficients": {names[j]: round(float(model.coef[j]), 6) for j in top} if len(names) else {},
    })
    return out


def oracle_baseline(data_path_or_manifest: str | Path | dict[str, Any] | Cache,
                    horizon: int | None = None) -> dict[str, Any] | None:
    """The demo oracle (`PATH.oracle.json` next to the demo parquet), or None for other data.

    Accepts the parquet path, a cache manifest (its ``source``) or an opened `Cache`. Returns
    ``{"path", "horizon", "ic", "rankic", "ic_ir", "rankic_ir", "days", "per_horizon", "note"}`` for
    `horizon` (default: the shortest in the oracle). The oracle is averaged over *all* days of the
    panel, the model and ridge over the validation days only: compare them as levels, not to the
    third decimal.
    """
    if isinstance(data_path_or_manifest, Cache):
        source = data_path_or_manifest.manifest.get("source")
    elif isinstance(data_path_or_manifest, dict):
        source = data_path_or_manifest.get("source")
    else:
        source = data_path_or_manifest
    if not source or str(source).startswith("s3://"):
        return None
    path = Path(str(source) + ".oracle.json")
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        per_h = {int(k.removeprefix("target_").removesuffix("d")): v for k, v in raw["oracle"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable oracle file %s: %s", path, exc)
        return None
    if not per_h:
        return None
    h = min(per_h) if horizon is None else int(horizon)
    if h not in per_h:
        log.warning("oracle file %s has no horizon %dd (has %s)", path, h, sorted(per_h))
        return None
    best = per_h[h]
    return {"path": str(path), "horizon": h,
            **{k: _num(best.get(k)) for k in ("ic", "rankic", "ic_ir", "rankic_ir")},
            "days": best.get("days"),
            "per_horizon": {f"{k}d": {m: _num(v) for m, v in per_h[k].items()} for k in sorted(per_h)},
            "note": "planted expected return mu_t vs realised target, mean over all days of the panel"}


class DemoOracle:
    """The demo's planted expected return as a `Predictor` (demo panels only; nothing to fit).

    Reads ``mu`` (`PATH.oracle.parquet`: Date, Code, mu, written by `atft_core.data.demo.generate` next to the
    panel the cache was built from) and places it on the cache grid. ``mu_t`` is the one-day
    conditional expectation known at t, used for every horizon (as the oracle file scores it), so
    `predict` repeats it along H. NaN where the stock had no published mu that day. On any other
    panel (no oracle file, an s3:// source, an unreadable file) `predict` raises ValueError.
    """

    def fit(self, cache: Cache, split: Split) -> DemoOracle:
        return self

    def predict(self, cache: Cache, days: np.ndarray) -> np.ndarray:
        mu = _planted_mu(cache, days)
        if mu is None:
            raise ValueError(f"no demo oracle next to {cache.manifest.get('source')}: the oracle exists for "
                             "demo panels only")
        return np.repeat(mu[:, :, None], len(cache.horizons), axis=2)


def _oracle_parquet(cache: Cache) -> Path | None:
    source = cache.manifest.get("source")
    if not source or str(source).startswith("s3://"):
        return None
    path = Path(str(source) + ".oracle.parquet")
    return path if path.is_file() else None


def _planted_mu(cache: Cache, days: np.ndarray) -> np.ndarray | None:
    """``[len(days), S]`` float64 planted mu on the cache grid, NaN where none; None off the demo."""
    path = _oracle_parquet(cache)
    if path is None:
        return None
    import polars as pl

    days = np.asarray(days, dtype=np.int64)
    date_pos = {d: i for i, d in enumerate(np.asarray(cache.dates)[days])}
    code_pos = {c: j for j, c in enumerate(cache.codes)}
    try:
        df = pl.read_parquet(path, columns=["Date", "Code", "mu"]).with_columns(pl.col("Date").cast(pl.String))
    except (OSError, pl.exceptions.PolarsError) as exc:
        log.warning("ignoring unreadable oracle file %s: %s", path, exc)
        return None
    df = df.filter(pl.col("Date").is_in(list(date_pos)))
    di = np.array([date_pos[d] for d in df["Date"].to_list()], dtype=np.int64)
    si = np.array([code_pos.get(c, -1) for c in df["Code"].to_list()], dtype=np.int64)
    ok = si >= 0
    pred = np.full((len(days), cache.x.shape[1]), np.nan)
    pred[di[ok], si[ok]] = df["mu"].to_numpy()[ok]
    return pred


def oracle_on_days(cache: Cache, days: np.ndarray, horizon_index: int = 0, min_stocks: int = 20,
                   quantile: float = 0.1) -> dict[str, Any] | None:
    """The demo oracle (`DemoOracle`) scored on exactly `days` (cache day indices), like a model: None off the demo.

    Scored with `metrics.summarize` against the raw targets of horizon `horizon_index`.
    """
    days = np.asarray(days, dtype=np.int64)
    try:
        pred = np.ascontiguousarray(DemoOracle().predict(cache, days)[:, :, horizon_index])
    except ValueError:  # not the demo, or its oracle file is unreadable (logged)
        return None
    target = np.where(cache.valid[days], cache.y[days, :, horizon_index], np.nan)
    out: dict[str, Any] = summarize(pred, target, min_stocks=min_stocks, quantile=quantile).to_dict()
    out.update({"path": str(_oracle_parquet(cache)), "horizon": int(cache.horizons[horizon_index]),
                "days": len(days),
                "note": "planted expected return mu_t vs realised target, on the same days as the model"})
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def comparison_markdown(model: dict[str, Any] | None, ridge: dict[str, Any] | None,
                        oracle: dict[str, Any] | None, control: dict[str, Any] | None = None,
                        peer: dict[str, Any] | None = None) -> str:
    """Markdown table: model vs LightGBM peer vs ridge vs oracle (IC, RankIC, RankIC IR, % of oracle).

    Each argument is a metrics dict with keys ic / rankic / rankic_ir (the gate's ``val_ic`` /
    ``val_rankic`` / ``val_rankic_ir`` are read too) or None (shown as n/a). `control`, when given,
    is the result of `atft_core.evaluate.controls.control_verdict` and adds a shuffled-target row.
    """
    o_ric = _num((oracle or {}).get("rankic"))

    def get(m: dict[str, Any], key: str) -> float | None:
        return _num(m.get(key, m.get(f"val_{key}")))

    def fmt(v: float | None, spec: str = "+.4f") -> str:
        return "n/a" if v is None else format(v, spec)

    def share(v: float | None) -> str:
        return "n/a" if v is None or not o_ric else f"{100.0 * v / o_ric:.0f} %"

    lines = ["| predictor | IC | RankIC | RankIC IR | % of oracle RankIC |", "|---|---|---|---|---|"]
    where = "same days" if oracle is not None and "path" in oracle and str(oracle["path"]).endswith(".parquet") \
        else "all days"
    members = int((model or {}).get("ensemble") or 1)
    model_name = "model" if members == 1 else f"model (seed ensemble of {members})"
    rows = [(model_name, model), ("LightGBM peer (Alpha158-style features)", peer),
            ("ridge (last-day features)", ridge), (f"oracle (demo, {where})", oracle)]
    if control is not None:
        rows.append(("model on shuffled targets (control)", control))
    for name, m in rows:
        if m is None:
            lines.append(f"| {name} | n/a | n/a | n/a | n/a |")
            continue
        ric = get(m, "rankic")
        ir = fmt(get(m, "rankic_ir"), ".3f")
        lines.append(f"| {name} | {fmt(get(m, 'ic'))} | {fmt(ric)} | {ir} | {share(ric)} |")
    if control is not None:
        band = _num(control.get("band"))
        verdict = "inside" if control.get("inside") else "OUTSIDE"
        lines.append("")
        lines.append(f"Control RankIC {fmt(_num(control.get('rankic')))} is {verdict} the noise band "
                     f"+-{fmt(band, '.4f')} (a model trained on shuffled targets must score ~0).")
    return "\n".join(lines) + "\n"


def dryrun_baselines(cache: Cache, split: Split, model_metrics: dict[str, Any] | None, *,
                     min_stocks: int = 20, max_train_days: int | None = None,
                     control: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the dry run reports next to its model: ridge, oracle, optional control, markdown.

    ``{"ridge": ridge_baseline(...) or None, "peer": peer_baseline(...) or None, "oracle": the oracle on
    the same days (`oracle_on_days`; the all-days `oracle_baseline` for an older demo; None off the
    demo), "control": control (as given), "days": "test" | "validation", "markdown": ...}``, on the
    first horizon (the gate's) and the held-out test days (validation when the split has none).
    `model_metrics` are the model's metrics on those same days (keys ic / rankic / rankic_ir).
    A baseline that cannot be fit (too few rows) is None with a warning, never a crash: the
    baselines must not fail the gate.
    """
    from atft_core.evaluate.peer import peer_baseline

    days = eval_days(split)
    ridge: dict[str, Any] | None
    try:
        ridge = ridge_baseline(cache, split, min_stocks=min_stocks, max_train_days=max_train_days)
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("ridge baseline skipped: %s", exc)
        ridge = None
    peer: dict[str, Any] | None
    try:
        peer = peer_baseline(cache, split, days, min_stocks=min_stocks)
    except ValueError as exc:
        log.warning("LightGBM peer skipped: %s", exc)
        peer = None
    oracle = oracle_on_days(cache, days, min_stocks=min_stocks) or oracle_baseline(cache, horizon=cache.horizons[0])
    which = "test" if len(split.test) else "validation"
    return {"ridge": ridge, "peer": peer, "oracle": oracle, "control": control, "days": which,
            "markdown": f"### Model vs baselines ({which}, {len(days)} days, {cache.horizons[0]}d)\n\n"
                        + comparison_markdown(model_metrics, ridge, oracle, control, peer)}
