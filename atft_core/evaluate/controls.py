"""Leakage controls: a shuffled-target cache (a model trained on it must find nothing) and its noise band.

Why a control run: a validation RankIC of 0.03 on real data is either a small real edge or an artefact
(a look-ahead feature, a split that leaks, a metric bug). Training the *same* pipeline on targets that
were shuffled among the names of each day removes every real feature -> target relation while keeping
everything else (the days, the names, the feature distributions, each day's return distribution). A
model trained on it and scored on the *real* validation targets must land inside the noise band around
0; if it does not, something other than the features' signal reaches the score.

The look-ahead check on single features lives in the cache build (`atft_core.data.cache.leak`):
it flags, by name, every feature whose mean daily RankIC with a forward target is implausibly high.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from atft_core.data.cache.store import Cache
from atft_core.data.split import Split
from atft_core.ic import daily_ic


def shuffled_target_cache(cache: Cache, seed: int = 0, days: np.ndarray | None = None) -> Cache:
    """A copy of `cache` whose targets are permuted among each day's valid names.

    On every day (or every day in `days`, cache day indices; None = all days) the rows of ``y`` and
    ``y_z`` (all horizons together, one permutation per day, the same for ``y`` and ``y_z``) are
    shuffled among the stocks valid that day. Each day keeps exactly its multiset of targets, so the
    per-day loss and metrics see realistic values, but which name earned which return is random:
    training on it can learn no real feature -> return relation. Invalid cells are left in place.

    Features, validity and statics are shared with the original (zero copy); ``y`` / ``y_z`` are new
    in-memory arrays. The manifest gets a ``control`` entry and a fingerprint suffix, so a checkpoint
    trained on the control cannot be mistaken for one trained on the real data. Vectorised: one
    argsort per grid, no loop over days or stocks.

    To score a control run on the real validation targets, either shuffle only the training days
    (``days=split.train``, then the trainer's own validation uses real targets) or shuffle everything
    and re-score the validation predictions against the original ``cache.y``.
    """
    valid = np.asarray(cache.valid, dtype=bool)
    D, S = valid.shape
    rows = np.arange(D) if days is None else np.unique(np.asarray(days, dtype=np.int64))
    rng = np.random.default_rng(seed)
    v = valid[rows]  # [R, S]
    col = np.arange(S, dtype=np.float64)[None, :]
    # destination slots: the day's valid columns in ascending order, then its invalid columns
    dst = np.argsort(np.where(v, col, S + col), axis=1, kind="stable")
    # sources: the same valid columns in random order, then the invalid columns in the same order as dst
    src = np.argsort(np.where(v, rng.random(v.shape), 1.0 + S + col), axis=1, kind="stable")
    y = np.array(cache.y, copy=True)
    y_z = np.array(cache.y_z, copy=True)
    r = rows[:, None]
    y[r, dst] = cache.y[r, src]
    y_z[r, dst] = cache.y_z[r, src]
    manifest = dict(cache.manifest)
    manifest["control"] = {"kind": "shuffled_targets", "seed": int(seed),
                           "days": "all" if days is None else len(rows)}
    manifest["fingerprint"] = f"{cache.manifest['fingerprint']}+shuffled-targets-seed{seed}"
    return dataclasses.replace(cache, manifest=manifest, y=y, y_z=y_z)


def noise_band(daily_rankic: np.ndarray) -> float:
    """Half-width of the band around 0 where a mean daily RankIC is indistinguishable from no signal.

    ``2 * std(daily RankIC, ddof=1) / sqrt(n_days)`` over the finite days: two standard errors of the
    mean. With no real signal the daily RankICs are draws around 0 and, days being (roughly)
    independent, their mean has standard error std / sqrt(n); |mean| < 2 SE holds with ~95 %
    probability. The std is the observed one (it contains the day-to-day dispersion of the metric,
    about 1 / sqrt(stocks) under the null). Caveat: for horizons h > 1 the targets of neighbouring
    days overlap, daily RankICs are autocorrelated and this band is too narrow by about sqrt(h);
    use it on the 1-day horizon (or widen it) for a strict check.

    Returns NaN with fewer than 2 finite days.
    """
    x = np.asarray(daily_rankic, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan")
    return float(2.0 * x.std(ddof=1) / math.sqrt(x.size))


def null_band(cache: Cache, train_days: np.ndarray, val_days: np.ndarray, horizon_index: int = 0,
              n_draws: int = 64, seed: int = 0, min_stocks: int = 20) -> float:
    """Band for a *single* control run: 2 x the spread of the validation RankIC of no-signal predictors.

    `noise_band` only counts the day-to-day sampling noise of one fixed predictor. A model trained on
    shuffled targets is not a fixed predictor: it is some random function of the features, and when
    the features do carry signal (the demo's do) a random function loads on it by chance, so its
    true RankIC is not 0 but varies from seed to seed. On the default demo data the seed-to-seed
    spread of the validation RankIC of a ridge fit on shuffled targets is as large as `noise_band`
    itself, so many seeds would fall outside the 2-SE band with no leak at all.

    This draws `n_draws` linear predictors exactly as a ridge fit to targets independent of the
    features is distributed, ``w ~ N(0, (X'X)^-1)`` with X'X from `train_days` (the scale does not
    matter for RankIC), scores each on the real targets of `val_days` with `atft_core.ic.daily_ic`, and
    returns ``2 * std`` (ddof=1) of their mean RankICs: the spread of both terms together (the
    sampling noise and the chance loading on real signal). Exact for the ridge control, an
    approximation for a deep model. NaN with fewer than 2 scorable draws.
    """
    from atft_core.evaluate.baselines import centred_gram, chunk_days

    g = centred_gram(cache, train_days, horizon_index)
    F = g.xx.shape[0]
    chol = np.linalg.cholesky(g.xx + 1e-9 * np.trace(g.xx) / max(F, 1) * np.eye(F))
    z = np.random.default_rng(seed).standard_normal((F, n_draws))
    w = np.linalg.solve(chol.T, z)  # cov(w) = (L L^T)^-1 = (X'X)^-1
    val_days = np.asarray(val_days, dtype=np.int64)
    Dv = len(val_days)
    valid = cache.valid[val_days]
    target = np.where(valid, cache.y[val_days, :, horizon_index], np.nan).astype(np.float64)
    means = np.empty(n_draws)
    step_k = 16  # draws scored at once: bounds the [draws * days, stocks] grid on the full panel
    step_d = chunk_days(cache)
    for a in range(0, n_draws, step_k):
        k = min(step_k, n_draws - a)
        p = np.empty((k, Dv, valid.shape[1]))
        for b in range(0, Dv, step_d):
            x = np.asarray(cache.x[val_days[b:b + step_d]], dtype=np.float64)  # [c, S, F]
            p[:, b:b + step_d] = np.moveaxis(x @ w[:, a:a + k], 2, 0)
        p = np.where(valid[None], p, np.nan).reshape(k * Dv, -1)
        _, ric = daily_ic(p, np.tile(target, (k, 1)), min_stocks=min_stocks)
        ric = ric.reshape(k, Dv)
        cnt = np.isfinite(ric).sum(axis=1)
        means[a:a + k] = np.where(cnt > 0, np.nansum(ric, axis=1) / np.maximum(cnt, 1), np.nan)
    means = means[np.isfinite(means)]
    return float(2.0 * means.std(ddof=1)) if means.size >= 2 else float("nan")


def control_verdict(daily_rankic: np.ndarray, null: float | None = None) -> dict[str, float | bool | int | None]:
    """The control check: is the control run's mean daily RankIC inside the band around 0?

    band = max(`noise_band`(daily_rankic), `null`) where `null` is `null_band` (optional; without
    it only the sampling noise of a fixed predictor is allowed for). JSON-safe dict with rankic,
    noise_band, null_band, band, n_days and inside.
    """
    x = np.asarray(daily_rankic, dtype=np.float64)
    x = x[np.isfinite(x)]
    sampling = noise_band(x)
    band = max(v for v in (sampling, null if null is not None else float("nan"), -1.0) if math.isfinite(v))
    mean = float(x.mean()) if x.size else float("nan")
    ok = bool(band >= 0 and math.isfinite(mean) and abs(mean) <= band)

    def safe(v: float | None) -> float | None:
        return v if v is not None and math.isfinite(v) else None

    return {"rankic": safe(mean), "noise_band": safe(sampling), "null_band": safe(null),
            "band": band if band >= 0 else None, "n_days": int(x.size), "inside": ok}


def control_result(cache: Cache, split: Split, val_pred: np.ndarray, val_days: np.ndarray, seed: int,
                   horizon_index: int = 0, min_stocks: int = 20) -> dict[str, Any]:
    """Verdict of a control run: its validation predictions scored on the *real* targets of `cache`.

    `cache` is the original (unshuffled) cache, `val_pred` [len(val_days), S, H] (or [.., S]) what
    the model trained on `shuffled_target_cache(cache, seed, days=split.train)` predicted. Returns
    `control_verdict` (band = the wider of `noise_band` and `null_band`) plus ic and the seed.
    """
    val_days = np.asarray(val_days, dtype=np.int64)
    pred = val_pred[:, :, horizon_index] if np.ndim(val_pred) == 3 else val_pred
    target = np.where(cache.valid[val_days], cache.y[val_days, :, horizon_index], np.nan)
    ic, ric = daily_ic(np.asarray(pred, dtype=np.float64), target, min_stocks=min_stocks)
    band = null_band(cache, split.train, val_days, horizon_index, min_stocks=min_stocks, seed=seed)
    out = control_verdict(ric, band)
    fic = ic[np.isfinite(ic)]
    out.update({"ic": float(fic.mean()) if fic.size else None, "seed": int(seed),
                "horizon": int(cache.horizons[horizon_index]),
                "kind": "trained on targets shuffled within each training day, scored on real validation targets"})
    return out
