"""Normalisation of the grid, one chunk of days at a time: same-day or past-days data only.

- cross-sectional features: per-day robust z-score (median / MAD, std when MAD is 0), clipped;
- market-level features (equal for every stock on almost every day: index returns, macro): a
  time-series z-score of the daily series with statistics from *past* days only;
- targets: per-day z-score, clipped, NaN where the return is unknown.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from atft_core.config import CacheConfig
from atft_core.data.cache import build_kernels

_MAD_SCALE = build_kernels.MAD_SCALE


class DayStats:
    """Statistics of raw features gathered chunk by chunk over every day (F features, D days).

    Enough to decide which features are market-level, to normalise those over time, and to warn
    about constant ones, without holding more than one chunk of days.
    """

    def __init__(self, n_days: int, n_feat: int):
        self.spread = np.zeros(n_feat)  # days on which the feature differs across stocks
        self.days_with_data = np.zeros(n_feat)  # days with >= 2 finite values
        self.daily_mean = np.full((n_days, n_feat), np.nan)  # [D, F] mean over the day's valid stocks
        self.count = np.zeros(n_feat, dtype=np.int64)  # finite values over all days
        self.lo = np.full(n_feat, np.inf)
        self.hi = np.full(n_feat, -np.inf)

    def add(self, day0: int, days: DaySummaries) -> None:
        """The raw values' summaries of days day0, day0+1, ... (`cross_section_days` returns them)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = days.total / days.n  # NaN on a day without a value
        self.daily_mean[day0:day0 + len(mean)] = mean
        self.count += days.n.sum(axis=0)
        has = days.n > 0
        self.lo = np.fmin(self.lo, np.where(has, days.lo, np.inf).min(axis=0))
        self.hi = np.fmax(self.hi, np.where(has, days.hi, -np.inf).max(axis=0))
        finite = days.n >= 2
        with np.errstate(invalid="ignore"):
            self.days_with_data += finite.sum(axis=0)
            self.spread += (finite & ((days.hi.astype(np.float64) - days.lo) > 1e-9 * (1 + np.abs(mean)))).sum(axis=0)

    def market_mask(self) -> np.ndarray:
        """Features equal for every stock on (almost) every day: index returns, macro, market flows.

        Cross-sectional z-scores would turn these into all zeros, so they are normalised over time.
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            frac_spread = self.spread / self.days_with_data
        return (self.days_with_data > 0) & (frac_spread < 0.05)

    def constant(self) -> np.ndarray:
        """Features with one value over all stocks and days (or none)."""
        return ~(self.hi > self.lo)

    def market_z(self, market: np.ndarray, cfg: CacheConfig) -> np.ndarray:
        """[D, F] past-only z-score of each market-level feature's daily series (0 for the others)."""
        z = np.zeros_like(self.daily_mean)
        for j in np.flatnonzero(market):
            z[:, j] = np.clip(past_only_zscore(self.daily_mean[:, j], cfg.market_window), -cfg.clip, cfg.clip)
        return z.astype(np.float32)

    def market_z_days(self, market: np.ndarray, cfg: CacheConfig, d0: int, d1: int) -> np.ndarray:
        """Rows [d0, d1) of `market_z` [c, F], from the daily series up to d1 only (days >= d1 may be unknown).

        The same numbers: the past-only z-score of day t reads days <= t (prefix sums, summed in order).
        """
        z = np.zeros((d1 - d0, len(market)))
        for j in np.flatnonzero(market):
            z[:, j] = np.clip(past_only_zscore(self.daily_mean[:d1, j], cfg.market_window)[d0:], -cfg.clip, cfg.clip)
        return z.astype(np.float32)


@dataclass
class DaySummaries:
    """Per day and feature, over the raw values of the stocks with a row: [c, F] each."""

    n: np.ndarray  # int64 finite values
    total: np.ndarray  # float64 their sum
    lo: np.ndarray  # float32 min (NaN without a value)
    hi: np.ndarray  # float32 max

    @classmethod
    def empty(cls, days: int, n_feat: int) -> DaySummaries:
        return cls(n=np.zeros((days, n_feat), np.int64), total=np.zeros((days, n_feat)),
                   lo=np.full((days, n_feat), np.nan, np.float32), hi=np.full((days, n_feat), np.nan, np.float32))


def cross_section_days(raw: np.ndarray, valid: np.ndarray, clip: float, out: np.ndarray,
                       compiled: bool | None = None, scratch: Scratch | None = None) -> tuple[DaySummaries, np.ndarray]:
    """raw [c, F, S] (feature-major) -> out [c, S, F]: every feature's per-day robust z-score;
    returns (the raw values' summaries, nonzero [c, F]).

    raw: NaN where missing; cells of a stock without a row that day (``valid`` [c, S] False) may
    hold anything (they are set to NaN here, in the sorted copy or in place). The z-score:
    (v - median) / (1.4826 MAD), the std where the MAD is 0, 0 where both are, clipped to +-clip;
    then 0 where missing or not valid. Same day only. Market-level features come
    out z-scored too: `fill_market` overwrites them once their past-only statistics are known.

    Days run on threads. ``compiled`` (default: when numba is installed) uses `build_kernels`,
    faster than the numpy steps, with the same numbers. ``scratch``: [F, S]
    buffers kept from one call to the next (a caller normalising chunk after chunk passes its own).
    """
    days, n_feat, n_stocks = raw.shape
    summaries = DaySummaries.empty(days, n_feat)
    nonzero = np.zeros((days, n_feat), dtype=bool)
    use_kernels = build_kernels.AVAILABLE if compiled is None else compiled
    scratch = scratch or Scratch((n_feat, n_stocks))

    def day_compiled(k: int) -> None:
        ordered = scratch.take()
        try:
            build_kernels.copy_present(raw[k], valid[k], ordered)  # absent: out of the statistics, 0 out
            ordered.sort(axis=1)  # numpy's SIMD sort: faster than anything compiled here
            build_kernels.day(raw[k], ordered, valid[k], clip, out[k], summaries.n[k], summaries.total[k],
                              summaries.lo[k], summaries.hi[k], nonzero[k])
        finally:
            scratch.give(ordered)

    def day_numpy(k: int) -> None:
        block = raw[k]  # [F, S]: every reduction and sort along memory
        block[:, ~valid[k]] = np.nan
        finite = np.isfinite(block)
        summaries.n[k] = finite.sum(axis=1)
        summaries.total[k] = np.where(finite, block, np.float32(0)).sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore"), _quiet_nan_warnings():
            summaries.lo[k], summaries.hi[k] = np.fmin.reduce(block, axis=1), np.fmax.reduce(block, axis=1)
        z = _robust_z(block, clip)
        np.copyto(z, np.float32(0), where=np.isnan(z))
        out[k] = z.T
        out[k][~valid[k]] = 0.0
        nonzero[k] = (out[k] != 0).any(axis=0)

    parallel_map(day_compiled if use_kernels else day_numpy, range(days))
    return summaries, nonzero


def fill_market(x: np.ndarray, valid: np.ndarray, market: np.ndarray, market_z: np.ndarray) -> np.ndarray:
    """In place on x [c, S, F]: market-level features (``market`` [F]) <- ``market_z`` [c, F] for every
    stock with a row (0 for the others); returns [F] bool, nonzero somewhere (False off ``market``)."""
    cols = np.flatnonzero(market)
    nonzero = np.zeros(len(market), dtype=bool)
    if len(cols):
        x[:, :, cols] = np.where(valid[:, :, None], market_z[:, None, cols], np.float32(0))
        nonzero[cols] = ((market_z[:, cols] != 0) & valid.any(axis=1)[:, None]).any(axis=0)
    return nonzero


class Scratch:
    """Buffers of one shape handed to threads and taken back. Fresh ones cost: numpy asks for huge
    pages on arrays this large (6.4 MB at 400 x 4,000), and each new one is zeroed page by page: made
    anew for every chunk they would be a large share of the pages a build faults in."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.free, self.lock = shape, [], threading.Lock()

    def take(self) -> np.ndarray:
        with self.lock:
            if self.free:
                return self.free.pop()
        return np.empty(self.shape, dtype=np.float32)

    def give(self, buf: np.ndarray) -> None:
        with self.lock:
            self.free.append(buf)


def _robust_z(block: np.ndarray, clip: float) -> np.ndarray:
    """[R, S] rows -> clipped (v - median) / (1.4826 MAD) per row (std where the MAD is 0, 0 where both are)."""
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        finite = np.isfinite(block)
        n = finite.sum(axis=1)
        ordered = np.sort(block, axis=1)
        med = _median_sorted(ordered, n)
        dev = block - med
        scale = _mad_sorted(ordered, n, med) * _MAD_SCALE
        # std only where the MAD says nothing (mostly-equal values): rare, so only those rows. Rows with
        # no value are left out: their std is NaN anyway, and numpy would warn about them, which the
        # warnings filter above cannot always stop (it is process-wide and days run on threads).
        low = np.flatnonzero(~(scale[:, 0] > 1e-12) & (n > 0))
        if len(low):
            scale[low] = np.nanstd(block[low], axis=1, keepdims=True)
        ok = scale[:, 0] > 1e-12
        dev /= np.where(ok[:, None], scale, np.float32(1))
        bad = np.flatnonzero(~ok)
        if len(bad):
            dev[bad] = np.where(finite[bad], np.float32(0), np.float32(np.nan))
        np.clip(dev, -clip, clip, out=dev)
    return dev


def _median_sorted(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Row medians [R, 1] of rows sorted ascending with NaN last (np.sort), ``n`` [R] finite values each.

    Equals np.nanmedian(row) (mean of the two middle values; NaN for a row with none): a SIMD sort of
    float32 rows is faster than partitioning them, and numpy's nanmedian loops in Python per row.
    """
    last = s.shape[1] - 1
    lo = np.clip((n - 1) // 2, 0, last)[:, None]
    hi = np.clip(n // 2, 0, last)[:, None]
    med = (np.take_along_axis(s, lo, axis=1) + np.take_along_axis(s, hi, axis=1)) / 2
    return np.where(n[:, None] > 0, med, np.nan).astype(s.dtype, copy=False)


def _mad_sorted(s: np.ndarray, n: np.ndarray, med: np.ndarray) -> np.ndarray:
    """Row MADs [R, 1]: the median of |v - med| over each row's ``n`` finite values, from the sorted rows ``s``.

    Equals ``_median_sorted(np.sort(np.abs(s - med), axis=1), n)`` bit for bit, without that second sort
    (a third of the build's normalisation time): left of the median the deviations, read right to left,
    are one ascending run, right of it another, so each order statistic is found by a binary search over
    how many of the smallest come from the left run (the k-th smallest of two sorted arrays), on all rows
    at once.
    """
    n_rows, last = s.shape[0], s.shape[1] - 1
    p = np.count_nonzero(s < med, axis=1)  # values left of the median (NaN compares False)
    # both middle order statistics of every row searched at once: row r's lower one at r, its upper one
    # at r + n_rows (the searches are a dozen small vector steps each: one loop instead of two halves
    # their Python overhead, the arithmetic per element is the same)
    rows, p, n, m = np.tile(np.arange(n_rows), 2), np.tile(p, 2), np.tile(n, 2), np.tile(med[:, 0], 2)
    k = np.concatenate([np.maximum((n[:n_rows] - 1) // 2, 0), np.maximum(n[:n_rows] // 2, 0)])

    def left(t: np.ndarray) -> np.ndarray:  # t-th smallest deviation of the left run
        return np.abs(s[rows, np.clip(p - 1 - t, 0, last)] - m)

    def right(u: np.ndarray) -> np.ndarray:  # u-th smallest deviation of the right run
        return np.abs(s[rows, np.clip(p + u, 0, last)] - m)

    n_right = n - p
    lo, hi = np.maximum(0, k + 1 - n_right), np.minimum(k + 1, p)  # how many come from the left run
    while (lo < hi).any():
        i = (lo + hi) // 2
        more = (i < p) & (k - i >= 0) & (right(k - i) > left(i))  # the (k+1-i)-th right beats the next left
        lo, hi = np.where((lo < hi) & more, i + 1, lo), np.where((lo < hi) & ~more, i, hi)
    j = k + 1 - lo
    from_left = np.where(lo > 0, left(lo - 1), -np.inf)
    from_right = np.where(j > 0, right(j - 1), -np.inf)
    kth = np.maximum(from_left, from_right).astype(s.dtype)
    mad = (kth[:n_rows] + kth[n_rows:]) / 2
    return np.where(n[:n_rows] > 0, mad, np.nan).astype(s.dtype, copy=False)[:, None]


def parallel_map(fn, items) -> list:
    """fn over items on a thread per core (the work must release the GIL: numpy, pyarrow)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def past_only_zscore(series: np.ndarray, window: int = 0) -> np.ndarray:
    """z_t = (v_t - mean(v_<t)) / std(v_<t): expanding (window 0) or rolling over the last `window` days.

    Day t never sees days after t; the first days (fewer than 2 past values) get 0.
    """
    v = np.where(np.isfinite(series), series, 0.0)
    n = np.isfinite(series).astype(np.float64)
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    cn = np.concatenate([[0.0], np.cumsum(n)])
    t = np.arange(len(series))
    lo = np.zeros_like(t) if window <= 0 else np.maximum(t - window, 0)
    cnt, s1, s2 = cn[t] - cn[lo], c1[t] - c1[lo], c2[t] - c2[lo]  # sums over days [lo, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = (s2 - cnt * mean * mean) / np.maximum(cnt - 1, 1)
        z = (series - mean) / np.sqrt(var)
    return np.where((cnt >= 2) & (var > 1e-24) & np.isfinite(z), z, 0.0)


def standardise_targets(y: np.ndarray, clip: float) -> np.ndarray:
    """Per-day z-score of each horizon's forward return, clipped; NaN where the return is unknown."""
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        mean = np.nanmean(y, axis=1, keepdims=True)
        std = np.nanstd(y, axis=1, keepdims=True)
        z = np.where(std > 1e-12, (y - mean) / std, np.nan)
    return np.clip(z, -clip, clip).astype(np.float32)


class _quiet_nan_warnings:
    """All-NaN slices are expected (holidays of a stock, empty days): silence numpy's RuntimeWarning."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
