"""The peer: the gradient-boosted tree a quant would try first, on Alpha158-style features.

The deep model has to beat this, not only a linear model. The peer sees exactly the cache's
features (nothing the model is not given) transformed the way a quant would:

- each feature ranked per day among the day's names (0..1, ties averaged);
- its 5-, 10- and 20-day rolling means per stock of that rank (days up to t only, over the days
  the stock had a row);
- its deviation from the day's mean rank within the stock's sector.

So 5F features per (day, stock). LightGBM is fit on the training days of the walk-forward split
(the per-day standardised target, as the model), early-stopped on the last `PeerConfig.valid_days`
training days after an embargo. `PeerModel` is the `atft_core.evaluate.predictor.Predictor`: one
booster per horizon it is asked to model (the 1st by default: a fit costs seconds to minutes, and
the gate compares the 1st horizon), ``[days, S, H]`` out like every predictor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atft_core.data.cache.store import Cache
from atft_core.data.split import Split
from atft_core.evaluate.metrics import summarize
from atft_core.ic import rank_average

log = logging.getLogger("atft_core.evaluate.peer")

ROLLING = (5, 10, 20)  # rolling-mean windows of the daily ranks, in trading days


@dataclass
class PeerConfig:
    valid_days: int = 60  # training days at the end held out (after the embargo) for early stopping (at most 1/5)
    max_rows: int = 400_000  # training rows kept (whole days, evenly spaced) to bound the fit time
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 600
    early_stopping: int = 50
    num_threads: int = 2
    seed: int = 0


def feature_names(names: list[str]) -> list[str]:
    """Names of the 5F peer features, in column order."""
    out = [f"{n}_rank" for n in names]
    for w in ROLLING:
        out += [f"{n}_rank_mean{w}" for n in names]
    return out + [f"{n}_rank_sector_dev" for n in names]


def peer_features(cache: Cache, days: np.ndarray, block: int = 64) -> np.ndarray:
    """``[len(days), S, 5F]`` float32 peer features of `days` (cache day indices), NaN where no row.

    Computed over blocks of consecutive days with the longest rolling window behind each block, so
    memory is O(block x S x F) whatever the panel length. Day t uses days <= t only.
    """
    days = np.asarray(days, dtype=np.int64)
    D, S, F = cache.x.shape
    out = np.full((len(days), S, F * (2 + len(ROLLING))), np.nan, dtype=np.float32)
    # the sector of each (day, stock) as of that day: a later reclassification is future information
    static = np.asarray(cache.static)
    sector = static[:, :, 1] if static.ndim == 3 else np.broadcast_to(static[:, 1], (D, S))  # [D, S]
    n_sec = int(sector.max()) + 2 if sector.size else 1
    order = np.argsort(days)
    sorted_days = days[order]
    for a in range(0, len(days), block):
        want = sorted_days[a:a + block]
        lo, hi = max(0, int(want[0]) - max(ROLLING) + 1), int(want[-1]) + 1
        valid = np.asarray(cache.valid[lo:hi], dtype=bool)  # [n, S]
        x = np.asarray(cache.x[lo:hi], dtype=np.float64)  # [n, S, F]
        n = hi - lo
        ranks = np.empty((n, S, F))
        cnt = np.maximum(valid.sum(axis=1, keepdims=True), 1)
        for f in range(F):  # rank_average ranks rows: one call per feature over all days of the block
            ranks[:, :, f] = (rank_average(x[:, :, f], valid) - 0.5) / cnt
        ranks = np.where(valid[:, :, None], ranks, 0.0)
        csum = np.concatenate([np.zeros((1, S, F)), np.cumsum(ranks, axis=0)])
        ccnt = np.concatenate([np.zeros((1, S)), np.cumsum(valid, axis=0)])
        rows = want - lo
        feats = [ranks[rows]]
        for w in ROLLING:
            start = np.maximum(rows + 1 - w, 0)
            num = csum[rows + 1] - csum[start]
            den = (ccnt[rows + 1] - ccnt[start])[:, :, None]
            feats.append(num / np.maximum(den, 1))
        # sector mean of the day's ranks over the names with a row
        r = ranks[rows]  # [k, S, F]
        v = valid[rows]
        sec = np.asarray(sector[want])
        sec_idx = np.where(sec < 0, n_sec - 1, sec)  # [k, S]; unknown sector is a group of its own
        tot = np.zeros((len(rows), n_sec, F))
        num_s = np.zeros((len(rows), n_sec))
        for k in range(len(rows)):
            np.add.at(tot[k], sec_idx[k][v[k]], r[k][v[k]])
            num_s[k] = np.bincount(sec_idx[k][v[k]], minlength=n_sec)
        mean_s = tot / np.maximum(num_s, 1)[:, :, None]
        feats.append(r - np.take_along_axis(mean_s, sec_idx[:, :, None], axis=1))
        block_out = np.concatenate(feats, axis=2).astype(np.float32)
        out[order[a:a + block]] = np.where(v[:, :, None], block_out, np.nan)
    return out


@dataclass
class PeerFit:
    """One horizon's booster (`fit_peer`); `PeerModel` holds one per modelled horizon."""

    booster: Any  # lightgbm.Booster
    best_iteration: int
    train_rows: int
    fit_seconds: float

    def apply(self, cache: Cache, days: np.ndarray, feats: np.ndarray | None = None) -> np.ndarray:
        """[len(days), S] float64 scores; NaN where the stock had no row. `feats`: `peer_features` of `days`."""
        feats = peer_features(cache, days) if feats is None else feats
        d, s, k = feats.shape
        valid = np.asarray(cache.valid[np.asarray(days, dtype=np.int64)], dtype=bool)
        out = np.full((d, s), np.nan)
        out[valid] = self.booster.predict(feats[valid], num_iteration=self.best_iteration)
        return out


@dataclass
class PeerModel:
    """The LightGBM peer as a `Predictor`: one booster per horizon index in `horizon_indices`.

    Default ``(0,)``: only the 1st horizon is modelled, and `predict`'s ``[len(days), S, H]`` float64
    grid is NaN in every other horizon (pass ``horizon_indices=range(H)`` to fit each, at one
    LightGBM fit per horizon). NaN also where the stock had no row. `fit` early-stops each booster
    on the last training days after the split's embargo (`fit_peer`).
    """

    cfg: PeerConfig = field(default_factory=PeerConfig)
    horizon_indices: Sequence[int] = (0,)
    fits: dict[int, PeerFit] = field(default_factory=dict)  # horizon index -> its booster, set by `fit`

    def fit(self, cache: Cache, split: Split) -> PeerModel:
        self.fits = {int(k): fit_peer(cache, split.train, split.embargo, self.cfg, int(k))
                     for k in self.horizon_indices}
        return self

    def predict(self, cache: Cache, days: np.ndarray) -> np.ndarray:
        if not self.fits:
            raise ValueError("peer model is not fitted yet: call fit(cache, split) first")
        feats = peer_features(cache, days)  # shared by every horizon's booster
        out = np.full((len(days), cache.x.shape[1], len(cache.horizons)), np.nan)
        for k, one in self.fits.items():
            out[:, :, k] = one.apply(cache, days, feats)
        return out


def _rows(cache: Cache, days: np.ndarray, horizon_index: int) -> tuple[np.ndarray, np.ndarray]:
    feats = peer_features(cache, days)
    y = cache.y_z[days, :, horizon_index]
    m = np.asarray(cache.valid[days], dtype=bool) & np.isfinite(y)
    return feats[m], y[m].astype(np.float64)


def fit_peer(cache: Cache, train_days: np.ndarray, embargo: int, cfg: PeerConfig | None = None,
             horizon_index: int = 0) -> PeerFit:
    """LightGBM on `train_days`; the last ``cfg.valid_days`` of them (after `embargo`) early-stop it."""
    import lightgbm as lgb  # imported here: only the baselines need it

    cfg = cfg or PeerConfig()
    train_days = np.sort(np.asarray(train_days, dtype=np.int64))
    n_stop = min(cfg.valid_days, max(10, len(train_days) // 5))  # a short history keeps most days for the fit
    if len(train_days) < n_stop + embargo + 20:
        raise ValueError(f"peer baseline: {len(train_days)} training days are too few for "
                         f"{n_stop} early-stopping days + {embargo} embargo + 20 days to fit on")
    stop_days = train_days[-n_stop:]
    fit_days = train_days[train_days < stop_days[0] - embargo]
    per_day = max(1.0, float(np.asarray(cache.valid[fit_days]).sum()) / len(fit_days))
    keep = int(cfg.max_rows // per_day)
    if len(fit_days) > keep:
        fit_days = fit_days[np.unique(np.linspace(0, len(fit_days) - 1, num=keep).round().astype(int))]
    t0 = time.perf_counter()
    x_fit, y_fit = _rows(cache, fit_days, horizon_index)
    x_stop, y_stop = _rows(cache, stop_days, horizon_index)
    params = {"objective": "regression", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
              "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": cfg.feature_fraction,
              "bagging_fraction": cfg.bagging_fraction, "bagging_freq": 1, "lambda_l2": cfg.lambda_l2,
              "num_threads": cfg.num_threads, "seed": cfg.seed, "deterministic": True, "verbosity": -1}
    dfit = lgb.Dataset(x_fit, y_fit, free_raw_data=True)
    dstop = lgb.Dataset(x_stop, y_stop, reference=dfit)
    booster = lgb.train(params, dfit, num_boost_round=cfg.max_rounds, valid_sets=[dstop],
                        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    best = booster.best_iteration or cfg.max_rounds
    return PeerFit(booster=booster, best_iteration=best, train_rows=len(y_fit),
                   fit_seconds=time.perf_counter() - t0)


def peer_baseline(cache: Cache, split: Split, eval_days: np.ndarray | None = None, *, horizon_index: int = 0,
                  min_stocks: int = 20, quantile: float = 0.1, cfg: PeerConfig | None = None,
                  return_pred: bool = False) -> dict[str, Any]:
    """The peer fit on ``split.train`` and scored on `eval_days` (default: test days, else validation).

    Returns `metrics.summarize`'s dict plus what was fit; with `return_pred` also ``pred [days, S]``.
    """
    days = np.asarray(eval_days if eval_days is not None else (split.test if len(split.test) else split.val))
    peer = PeerModel(cfg or PeerConfig(), horizon_indices=(horizon_index,)).fit(cache, split)
    model = peer.fits[horizon_index]
    pred = np.ascontiguousarray(peer.predict(cache, days)[:, :, horizon_index])
    target = np.where(cache.valid[days], cache.y[days, :, horizon_index], np.nan)
    out: dict[str, Any] = summarize(pred, target, min_stocks=min_stocks, quantile=quantile).to_dict()
    out.update({"model": "lightgbm(rank, rolling 5/10/20, sector deviation)",
                "horizon": int(cache.horizons[horizon_index]), "rounds": model.best_iteration,
                "train_rows": model.train_rows, "eval_days": len(days),
                "seconds": round(model.fit_seconds, 2)})
    if return_pred:
        out["pred"] = pred
    return out
