"""The look-ahead screen: features whose daily RankIC with a forward target no real signal reaches.

A feature is *suspect* when the mean of its daily RankIC with any target, over the screened days,
is above ``max(floor, k * sd0)`` in absolute value, where ``sd0`` is the spread of that mean when the
feature carries nothing (the null):

- one day's RankIC over n stocks has null sd ~ 1 / sqrt(n - 1), so the mean over the days d has
  sd ~ sqrt(sum_d 1 / (n_d - 1)) / D;
- an h-day forward return overlaps the next days' ones, so for a persistent feature the daily
  values are correlated over ~h days: the variance is inflated by max(1, h / g), g the spacing in
  trading days between screened days.

``k`` (6 by default) makes a false alarm on noise practically impossible even over 400 features x 4
horizons; the ``floor`` (0.2) sits far above what a real daily equity signal reaches (~0.05, the
demo's best planted signal is 0.06) and far below a copy of the target (~1) or a noisy copy. On a
small panel (30 stocks x 60 days) the noise term dominates (~0.3); on a real one (4,000 x 1,000)
the floor does. The gate turns suspects into the ``no_lookahead`` failure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from atft_core.data.cache import build_kernels
from atft_core.data.cache.normalise import parallel_map
from atft_core.ic import centred_ranks, daily_ic

MIN_STOCKS = 10  # days with fewer names give no RankIC
# Days screened, evenly spaced: 64, fewer on a wide panel so that days x S x F x H stays near
# SCREEN_CELLS (the cost is two sorts of each cell), but never fewer than 16. On 4,000 x 400 x 4 that is
# 16 days, where the noise term is ~0.02: far below the floor, so more days would not change a verdict.
# The cap binds only where the floor dominates: k * sd0 reaches the floor (0.2) only when days x (S - 1)
# < ~900, i.e. S < ~57 stocks at 16 days, where a day has far fewer cells than SCREEN_CELLS / 16.
SCREEN_DAYS = 64
SCREEN_CELLS = 25_000_000


def screen_days(n_days: int, max_days: int = SCREEN_DAYS, cells_per_day: int = 0) -> np.ndarray:
    """Up to ``max_days`` evenly spaced days (the same for every feature); fewer when a day has many cells."""
    if cells_per_day:
        max_days = min(max_days, max(16, SCREEN_CELLS // cells_per_day))
    return np.unique(np.linspace(0, n_days - 1, num=min(max_days, n_days)).astype(int))


def daily_rankics(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per day, feature and horizon: RankIC and the number of stocks it was computed on.

    x [n, S, F], y [n, S, H], valid [n, S] for n screened days -> (ric [n, H, F], stocks [n, H, F]);
    ric is NaN on a day with fewer than MIN_STOCKS names or no spread. Same numbers as
    `atft_core.ic.daily_ic` on each (day, feature, horizon) (tested against it).
    """
    n, _, n_feat = x.shape
    ric = np.full((n, y.shape[2], n_feat), np.nan)
    stocks = np.zeros((n, y.shape[2], n_feat), dtype=np.int64)

    def day(i: int) -> None:  # writes day i's rows only: days run on threads
        if build_kernels.AVAILABLE and _day_compiled(x[i], y[i], valid[i], ric[i], stocks[i]):
            return
        # horizons whose target is known on the same names share one ranking of every feature
        groups: dict[bytes, tuple[np.ndarray, list[int]]] = {}
        for kh in range(y.shape[2]):
            m = valid[i] & np.isfinite(y[i, :, kh])
            groups.setdefault(np.packbits(m).tobytes(), (m, []))[1].append(kh)
        for m, hs in groups.values():
            ric[i, hs], stocks[i, hs] = _rankic_block(x[i][m].T, y[i][m][:, hs].T)

    parallel_map(day, range(n))
    return ric, stocks


def _day_compiled(x: np.ndarray, y: np.ndarray, valid: np.ndarray, ric: np.ndarray, stocks: np.ndarray) -> bool:
    """One day's ric [H, F] and stocks [H, F] from x [S, F], y [S, H], valid [S] with one argsort per feature
    (`build_kernels.subset_rankics`); False (nothing written) when a feature is missing on a valid name:
    those pairs are dropped per feature, which the numpy path does."""
    feat = np.ascontiguousarray(x[valid].T)  # [F, U]
    if not np.isfinite(feat).all():
        return False
    target = y[valid].T  # [H, U]
    member = np.isfinite(target)
    target_rank = np.zeros(target.shape)
    for h in range(target.shape[0]):
        known = np.flatnonzero(member[h])
        if len(known):
            order, rank = centred_ranks(target[h, known][None])
            target_rank[h, known[order[0]]] = rank[0]
    build_kernels.subset_rankics(feat, np.argsort(feat, axis=1), member, target_rank, max(MIN_STOCKS, 2),
                                 ric, stocks)
    return True


def _rankic_block(feat: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """feat [F, k] (NaN = missing), target [h, k] finite, over one day's k names -> (ric [h, F], stocks [h, F]).

    Features finite on all k names (every feature of a normalised chunk) are ranked with one row-wise
    sort; their RankIC with each target is the sum, over sorted positions, of the feature's centred
    average rank times the target's centred rank at that name. The others (NaN somewhere) go through
    `daily_ic`, which drops the missing pairs.
    """
    n_feat, k = feat.shape
    finite = np.isfinite(feat)
    count = finite.sum(axis=1)
    ric = np.full((target.shape[0], n_feat), np.nan)
    stocks = np.broadcast_to(count, ric.shape).copy()
    if k < max(MIN_STOCKS, 2):
        return ric, stocks
    full = count == k
    rows = np.flatnonzero(full)
    if len(rows):
        t_order, t_rank = centred_ranks(target)  # [h, k] each
        rt = np.empty_like(t_rank)
        np.put_along_axis(rt, t_order, t_rank, axis=1)  # back to name order
        order, rank = centred_ranks(feat[rows])  # [Ff, k] each, in sorted order
        # [h, Ff], one horizon at a time: the same sums as (rt[:, order] * rank).sum(axis=2) without its
        # [h, Ff, k] float64 temporary, which would dominate the time on a wide panel
        sxy = np.stack([(rt_h[order] * rank).sum(axis=1) for rt_h in rt])
        sxx = np.einsum("ij,ij->i", rank, rank)
        syy = np.einsum("ij,ij->i", rt, rt)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.clip(sxy / np.sqrt(syy[:, None] * sxx[None, :]), -1.0, 1.0)
        # average ranks are multiples of 1/2 whose mean is exactly (k + 1) / 2: centred exactly, so a
        # constant row gives exactly 0 spread and an undefined (NaN) correlation, as in daily_ic
        ric[:, rows] = np.where((syy[:, None] > 0) & (sxx[None, :] > 0), r, np.nan)
    part = np.flatnonzero(~full)
    for kh in range(target.shape[0]) if len(part) else ():
        _, ric[kh, part] = daily_ic(feat[part], np.broadcast_to(target[kh], (len(part), k)), min_stocks=MIN_STOCKS)
    return ric, stocks


def summarise(ric: np.ndarray, stocks: np.ndarray, feats: list[str], horizons: tuple[int, ...], spacing: float,
              floor: float, k: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Suspects (feature, horizon, rankic, threshold) and the screen's parameters, from `daily_rankics` rows."""
    suspects: list[dict[str, Any]] = []
    thresholds: dict[str, float] = {}
    for kh, h in enumerate(horizons):
        thr = None
        for j, name in enumerate(feats):
            ok = np.isfinite(ric[:, kh, j])
            if not ok.any():
                continue  # market-level feature (no spread across stocks) or no target: nothing to rank
            n = stocks[ok, kh, j].astype(np.float64)
            sd0 = float(np.sqrt(np.sum(1.0 / np.maximum(n - 1, 1))) / ok.sum() * np.sqrt(max(1.0, h / spacing)))
            thr = max(floor, k * sd0)
            m = float(np.mean(ric[ok, kh, j]))
            if abs(m) > thr:
                suspects.append({"feature": name, "horizon": h, "rankic": round(m, 4), "threshold": round(thr, 4),
                                 "noise_sd": round(sd0, 5), "days": int(ok.sum())})
        if thr is not None:
            thresholds[f"{h}d"] = round(thr, 4)
    screen = {"floor": floor, "k": k, "days_screened": int(ric.shape[0]), "thresholds": thresholds,
              "rule": "|mean daily RankIC| > max(floor, k * null sd of that mean)"}
    return suspects, screen


def spacing_of(n_days: int, days: np.ndarray) -> float:
    """Trading days between screened days (>= 1)."""
    return max(1.0, (n_days - 1) / max(1, len(days) - 1))


def leak_suspects(x: np.ndarray, y: np.ndarray, valid: np.ndarray, feats: list[str], horizons: tuple[int, ...],
                  floor: float, k: float, max_days: int = SCREEN_DAYS) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The screen on a whole grid held in memory: x [D, S, F], y [D, S, H] raw returns, valid [D, S]."""
    days = screen_days(x.shape[0], max_days, x.shape[1] * x.shape[2] * y.shape[2])
    ric, stocks = daily_rankics(x[days], y[days], valid[days])
    return summarise(ric, stocks, feats, horizons, spacing_of(x.shape[0], days), floor, k)


def suspect_message(s: dict[str, Any], target: str) -> str:
    return (f"feature '{s['feature']}': mean daily RankIC {s['rankic']:+.3f} with {target} is beyond "
            f"{s['threshold']:.3f} (what noise and real signals reach): likely look-ahead (future information) "
            "in this column; the dry-run gate fails on no_lookahead unless gate.lookahead_allow names it with a "
            "reason")
