"""The peer: the gradient-boosted tree a quant would try first, on Alpha158-style features.

The deep model has to beat this, not only a linear model. The peer sees exactly the cache's
features (nothing the model is not given) transformed the way a quant would:

- each feature ranked per day among the day's names (0..1, ties averaged);
- its 5-, 10- and 20-day rolling means per stock of that rank (days up to t only, over the days
  the stock had a row);
- its deviation from the day's mean rank within the stock's sector.

So 5F features per (day, stock). A fair peer is held to the model's protocol, no stricter:

- it is fit on every training day of the walk-forward split (the per-day standardised target, as
  the model); when rows must be capped (`PeerConfig.max_rows`), stocks are subsampled within each
  day, so every day and every market regime stays in the fit;
- it is early-stopped on the split's validation days, the days the model picks its epoch on, by
  the metric the model is judged by (mean daily RankIC, a LightGBM feval), not by an L2 loss;
- `PeerConfig.bag` boosters from different seeds, averaged, match a seed ensemble of the same size;
- `PeerFit` keeps its wall and CPU time, so a comparison can say what each score cost.

`PeerModel` is the `atft_core.evaluate.predictor.Predictor`: one bag per horizon it is asked to
model (the 1st by default: a fit costs seconds to minutes, and the gate compares the 1st horizon),
``[days, S, H]`` out like every predictor.
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
from atft_core.evaluate.compare import daily_rankic
from atft_core.evaluate.metrics import summarize
from atft_core.ic import rank_average

log = logging.getLogger("atft_core.evaluate.peer")

ROLLING = (5, 10, 20)  # rolling-mean windows of the daily ranks, in trading days


@dataclass
class PeerConfig:
    # training rows kept; above it stocks are subsampled within every day. Memory: rows x 5F x 4 bytes
    max_rows: int = 1_000_000
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 600
    early_stopping: int = 50  # rounds without a higher validation RankIC before a booster stops
    bag: int = 1  # boosters with seeds seed, seed + 1, ...: their mean is the score (an ensemble's peer)
    min_stocks: int = 20  # validation days with fewer names are left out of the stopping metric
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
    """One horizon's bag of boosters (`fit_peer`); `PeerModel` holds one per modelled horizon.

    Its score is the mean of the boosters' predictions (they are fit to the same per-day standardised
    target, so their units agree). `fit_seconds` is the wall time of the whole fit (features, rows,
    every booster), `cpu_seconds` its CPU time over all threads (`time.process_time`).
    """

    boosters: list[Any]  # lightgbm.Booster, one per bag member
    best_iterations: list[int]  # each booster's round of highest validation RankIC
    val_rankic: list[float]  # each booster's mean daily validation RankIC at that round
    train_rows: int
    train_days: int
    fit_seconds: float
    cpu_seconds: float

    @property
    def best_iteration(self) -> int:
        """The first booster's best round (the only one without a bag)."""
        return self.best_iterations[0]

    def apply(self, cache: Cache, days: np.ndarray, feats: np.ndarray | None = None) -> np.ndarray:
        """[len(days), S] float64 scores; NaN where the stock had no row. `feats`: `peer_features` of `days`."""
        feats = peer_features(cache, days) if feats is None else feats
        d, s, k = feats.shape
        valid = np.asarray(cache.valid[np.asarray(days, dtype=np.int64)], dtype=bool)
        out = np.full((d, s), np.nan)
        rows = feats[valid]
        out[valid] = np.mean([b.predict(rows, num_iteration=it)
                              for b, it in zip(self.boosters, self.best_iterations, strict=True)], axis=0)
        return out


@dataclass
class PeerModel:
    """The LightGBM peer as a `Predictor`: one `PeerFit` per horizon index in `horizon_indices`.

    Default ``(0,)``: only the 1st horizon is modelled, and `predict`'s ``[len(days), S, H]`` float64
    grid is NaN in every other horizon (pass ``horizon_indices=range(H)`` to fit each, at one
    LightGBM fit per horizon). NaN also where the stock had no row. `fit` trains on every training
    day of the split and early-stops on its validation days by their mean daily RankIC (`fit_peer`).
    """

    cfg: PeerConfig = field(default_factory=PeerConfig)
    horizon_indices: Sequence[int] = (0,)
    fits: dict[int, PeerFit] = field(default_factory=dict)  # horizon index -> its boosters, set by `fit`

    def fit(self, cache: Cache, split: Split) -> PeerModel:
        self.fits = {int(k): fit_peer(cache, split, self.cfg, int(k)) for k in self.horizon_indices}
        return self

    def predict(self, cache: Cache, days: np.ndarray) -> np.ndarray:
        if not self.fits:
            raise ValueError("peer model is not fitted yet: call fit(cache, split) first")
        feats = peer_features(cache, days)  # shared by every horizon's booster
        out = np.full((len(days), cache.x.shape[1], len(cache.horizons)), np.nan)
        for k, one in self.fits.items():
            out[:, :, k] = one.apply(cache, days, feats)
        return out


def row_mask(cache: Cache, days: np.ndarray, horizon_index: int, max_rows: int, seed: int) -> np.ndarray:
    """``[len(days), S]`` rows a fit on `days` uses: a row and a known target, thinned to about `max_rows`.

    Over the cap, each row is kept with the same probability (a seeded draw), so every day keeps
    about the same share of its stocks: no day, hence no market regime, is dropped.
    """
    days = np.asarray(days, dtype=np.int64)
    m = np.asarray(cache.valid[days], dtype=bool) & np.isfinite(cache.y_z[days, :, horizon_index])
    total = int(m.sum())
    if total > max_rows:
        m &= np.random.default_rng(seed).random(m.shape) < max_rows / total
    return m


def _rows(cache: Cache, days: np.ndarray, mask: np.ndarray, horizon_index: int,
          chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(features [rows, 5F] float32, per-day standardised target [rows]) of the `mask` cells of `days`.

    Features are computed `chunk` days at a time, so memory holds the kept rows, not every day's grid.
    """
    xs, ys = [], []
    for a in range(0, len(days), chunk):
        d, m = days[a:a + chunk], mask[a:a + chunk]
        xs.append(peer_features(cache, d)[m])
        ys.append(cache.y_z[d, :, horizon_index][m].astype(np.float64))
    return np.concatenate(xs), np.concatenate(ys)


def _rankic_feval(cache: Cache, days: np.ndarray, mask: np.ndarray, horizon_index: int, min_stocks: int):
    """A LightGBM feval: mean daily RankIC of the validation rows' predictions against the raw targets."""
    target = np.where(mask, cache.y[days, :, horizon_index], np.nan)
    grid = np.full(mask.shape, np.nan)

    def feval(preds: np.ndarray, _data: Any) -> tuple[str, float, bool]:
        grid[mask] = preds
        ric = daily_rankic(grid, target, min_stocks)
        return "rankic", float(np.nanmean(ric)) if np.isfinite(ric).any() else float("nan"), True

    return feval


def fit_peer(cache: Cache, split: Split, cfg: PeerConfig | None = None, horizon_index: int = 0) -> PeerFit:
    """LightGBM on every day of ``split.train``, each of ``cfg.bag`` boosters early-stopped on ``split.val``.

    Early stopping keeps the round with the highest mean daily RankIC of the validation days, the
    days and the metric the model picks its epoch by. Raises ValueError when the split has no
    validation day or too few training rows.
    """
    import lightgbm as lgb  # imported here: only the baselines need it

    cfg = cfg or PeerConfig()
    t0, c0 = time.perf_counter(), time.process_time()
    train_days = np.sort(np.asarray(split.train, dtype=np.int64))
    val_days = np.sort(np.asarray(split.val, dtype=np.int64))
    if len(val_days) == 0:
        raise ValueError("peer baseline: the split has no validation days to stop on")
    train_mask = row_mask(cache, train_days, horizon_index, cfg.max_rows, cfg.seed)
    val_mask = row_mask(cache, val_days, horizon_index, np.iinfo(np.int64).max, cfg.seed)
    if train_mask.sum() < 2 * cfg.min_data_in_leaf or val_mask.sum() == 0:
        raise ValueError(f"peer baseline: {int(train_mask.sum())} training rows over {len(train_days)} days and "
                         f"{int(val_mask.sum())} validation rows are too few to fit and stop on")
    x_fit, y_fit = _rows(cache, train_days, train_mask, horizon_index)
    x_val, y_val = _rows(cache, val_days, val_mask, horizon_index)
    feval = _rankic_feval(cache, val_days, val_mask, horizon_index, cfg.min_stocks)
    dfit = lgb.Dataset(x_fit, y_fit, free_raw_data=True)
    dval = lgb.Dataset(x_val, y_val, reference=dfit)
    boosters, best, scores = [], [], []
    for k in range(max(1, cfg.bag)):
        params = {"objective": "regression", "metric": "None", "learning_rate": cfg.learning_rate,
                  "num_leaves": cfg.num_leaves, "min_data_in_leaf": cfg.min_data_in_leaf,
                  "feature_fraction": cfg.feature_fraction, "bagging_fraction": cfg.bagging_fraction,
                  "bagging_freq": 1, "lambda_l2": cfg.lambda_l2, "num_threads": cfg.num_threads,
                  "seed": cfg.seed + k, "deterministic": True, "verbosity": -1}
        booster = lgb.train(params, dfit, num_boost_round=cfg.max_rounds, valid_sets=[dval], feval=feval,
                            callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
        boosters.append(booster)
        best.append(int(booster.best_iteration or cfg.max_rounds))
        scores.append(float(booster.best_score.get("valid_0", {}).get("rankic", float("nan"))))
    return PeerFit(boosters=boosters, best_iterations=best, val_rankic=scores, train_rows=len(y_fit),
                   train_days=int(train_mask.any(axis=1).sum()), fit_seconds=time.perf_counter() - t0,
                   cpu_seconds=time.process_time() - c0)


def peer_baseline(cache: Cache, split: Split, eval_days: np.ndarray | None = None, *, horizon_index: int = 0,
                  min_stocks: int = 20, quantile: float = 0.1, cfg: PeerConfig | None = None,
                  return_pred: bool = False) -> dict[str, Any]:
    """The peer fit on ``split.train`` and scored on `eval_days` (default: test days, else validation).

    Returns `metrics.summarize`'s dict plus what was fit; with `return_pred` also ``pred [days, S]``.
    """
    days = np.asarray(eval_days if eval_days is not None else (split.test if len(split.test) else split.val))
    peer = PeerModel(cfg or PeerConfig(min_stocks=min_stocks), horizon_indices=(horizon_index,)).fit(cache, split)
    model = peer.fits[horizon_index]
    pred = np.ascontiguousarray(peer.predict(cache, days)[:, :, horizon_index])
    target = np.where(cache.valid[days], cache.y[days, :, horizon_index], np.nan)
    out: dict[str, Any] = summarize(pred, target, min_stocks=min_stocks, quantile=quantile).to_dict()
    out.update({"model": "lightgbm(rank, rolling 5/10/20, sector deviation)",
                "horizon": int(cache.horizons[horizon_index]), "rounds": model.best_iteration,
                "bag": len(model.boosters), "train_rows": model.train_rows, "train_days": model.train_days,
                "eval_days": len(days), "seconds": round(model.fit_seconds, 2),
                "cpu_seconds": round(model.cpu_seconds, 2)})
    if return_pred:
        out["pred"] = pred
    return out
