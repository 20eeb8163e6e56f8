"""Per-day cross-sectional IC, RankIC, long-short and rank kernels: the one definition used by every stage.

The cache build's look-ahead screen, the demo's oracle, training targets, validation, the gate, HPO
and reports all score with these functions (Qlib / alphalens conventions). Plain numpy, no stage
imports.

All grid functions take dense numpy grids ``[D, S]`` (days x stocks) where NaN marks a missing cell,
and compute all days at once (no Python loop over days or stocks; blocks of `BLOCK_DAYS` days only
bound memory) in float64. A cell counts for a day only when both the prediction and the target are
finite there.

Conventions (one each, used everywhere):

- per day, Pearson IC and Spearman RankIC over the stocks valid on both sides; RankIC uses average
  ranks for ties, ranked among that day's valid names only (``scipy.stats.spearmanr`` semantics);
- a day with fewer than ``min_stocks`` valid names is NaN (skipped), never pooled with another day;
- a day on which either side is constant (e.g. a collapsed model predicting one value) has an
  undefined correlation: NaN, as scipy returns. It is *not* treated as 0, so a model that predicts a
  constant everywhere ends up with a NaN mean RankIC, which the gate fails;
- long-short = mean target of the top prediction quantile minus the bottom one (long what the model
  ranks highest, never a sign flip).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BLOCK_DAYS = 256  # days per vectorised block (bounds temporaries; see `daily_metrics`)


def _as_grid(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [days, stocks] grid, got shape {arr.shape}")
    return arr


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = _as_grid(pred, "pred")
    t = _as_grid(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} must have the same shape")
    return p, t, np.isfinite(p) & np.isfinite(t)


@dataclass
class _Sorted:
    """One row-wise sort of a [D, S] grid with its tie runs (shared by ranks, constancy, long-short).

    order: [D, S] argsort of each row, valid entries first, ascending (order inside a tie is
        arbitrary: every user treats a tie group as a whole);
    n: [D] valid entries per row;
    start, end: [D, S] int32, for sorted position i the half-open range [start, end) of sorted
        positions holding the same value (i's tie group). Invalid entries form their own run(s)
        from n on, so they never tie with a valid value.
    """

    order: np.ndarray
    n: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def constant(self) -> np.ndarray:
        """[D] True where all valid entries of a row are equal (one run covers them all)."""
        return self.end[:, 0] >= self.n

    def ranks(self) -> np.ndarray:
        """[D, S] float64 average ranks (1-based) in original column order; garbage where invalid."""
        # sorted positions s..e-1 hold ranks s+1..e, whose mean is (s + e + 1) / 2
        avg = self.start.astype(np.float64)
        avg += self.end
        avg += 1.0
        avg *= 0.5
        ranks = np.empty_like(avg)
        np.put_along_axis(ranks, self.order, avg, axis=1)
        return ranks


def _sort_runs(a: np.ndarray, valid: np.ndarray) -> _Sorted:
    """Sort each row's valid entries and find the runs of equal values, without any row loop.

    Buffers are reused in place: on a large grid every fresh temporary costs about as much as the
    arithmetic on it.
    """
    D, S = a.shape
    key = np.where(valid, a, np.inf)
    order = np.argsort(key, axis=1)  # the default (SIMD quicksort), faster than kind="stable"
    ks = np.take_along_axis(key, order, axis=1)
    del key
    n = valid.sum(axis=1)
    pos = np.arange(S, dtype=np.int32)[None, :]
    # is_new[:, i]: sorted position i starts a run; column S is a sentinel so run ends read is_new[:, 1:]
    is_new = np.empty((D, S + 1), dtype=bool)
    is_new[:, 0] = True
    is_new[:, S] = True
    np.not_equal(ks[:, 1:], ks[:, :-1], out=is_new[:, 1:S])
    del ks
    is_new[np.arange(D), n] = True  # a valid +inf must not share a run with the invalid tail
    start = np.where(is_new[:, :S], pos, np.int32(0))
    np.maximum.accumulate(start, axis=1, out=start)
    end = np.where(is_new[:, 1:], pos + np.int32(1), np.int32(S))
    rev = end[:, ::-1]
    np.minimum.accumulate(rev, axis=1, out=rev)
    return _Sorted(order=order, n=n, start=start, end=end)


def rank_average(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise average ranks (1-based, ties share the mean of their ranks) among valid entries.

    Equals ``scipy.stats.rankdata(row[valid_row], method="average")`` on each row, computed for all
    rows at once from one argsort and the sorted-run boundaries.

    Args:
        a: [D, S] values.
        valid: [D, S] bool mask of the entries to rank.

    Returns:
        [D, S] float64 ranks, NaN where not valid.
    """
    a = _as_grid(a, "a")
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != a.shape:
        raise ValueError(f"valid {valid.shape} must match a {a.shape}")
    ranks = _sort_runs(a, valid).ranks()
    ranks[~valid] = np.nan
    return ranks


def _masked_pearson(
    x: np.ndarray, y: np.ndarray, m: np.ndarray, n: np.ndarray, undefined: np.ndarray, min_stocks: int
) -> np.ndarray:
    """Row-wise Pearson correlation over the entries where ``m`` is True. [D, S] -> [D].

    ``n`` [D] counts ``m`` per row; ``undefined`` [D] flags rows where either side is constant,
    known exactly from the sort: the centred values of a constant row can be 1e-17 noise rather
    than 0 (sum / n rounding), which would otherwise give a meaningless +-1.
    """
    nf = np.maximum(n, 1).astype(np.float64)[:, None]
    # two-pass (centre, then multiply) keeps float64 agreement with scipy at 1e-9 on raw returns
    xc = np.where(m, x, 0.0)
    xc -= xc.sum(axis=1, keepdims=True) / nf
    xc *= m
    yc = np.where(m, y, 0.0)
    yc -= yc.sum(axis=1, keepdims=True) / nf
    yc *= m
    sxy = np.einsum("ij,ij->i", xc, yc)
    sxx = np.einsum("ij,ij->i", xc, xc)
    syy = np.einsum("ij,ij->i", yc, yc)
    ok = (n >= max(min_stocks, 2)) & ~undefined
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    return np.where(ok, r, np.nan)


def _ic_from_sorted(
    p: np.ndarray, t: np.ndarray, m: np.ndarray, sp: _Sorted, min_stocks: int
) -> tuple[np.ndarray, np.ndarray]:
    # target ranked among the names valid on *both* sides, as spearmanr on NaN-dropped pairs
    st = _sort_runs(t, m)
    undefined = sp.constant | st.constant
    ic = _masked_pearson(p, t, m, sp.n, undefined, min_stocks)
    rankic = _masked_pearson(sp.ranks(), st.ranks(), m, sp.n, undefined, min_stocks)
    return ic, rankic


def _long_short_from_sorted(t: np.ndarray, m: np.ndarray, sp: _Sorted, quantile: float, min_stocks: int) -> np.ndarray:
    y_sorted = np.take_along_axis(np.where(m, t, 0.0), sp.order, axis=1)
    n = sp.n[:, None]
    # 1e-9: n * quantile can land a hair below an integer (0.1 * 70 is fine, 0.3 * 10 is 2.9999...)
    n_q = np.maximum(1, np.floor(n * quantile + 1e-9).astype(np.int32))
    run_len = (sp.end - sp.start).astype(np.float64)
    # weight of each sorted position = the share of its tie run inside the bottom window [0, n_q)
    # (top window [n - n_q, n)); sums to n_q per leg, so ties at the boundary are split evenly
    w = np.minimum(sp.end, n_q) - sp.start
    np.maximum(w, 0, out=w)
    bottom = np.einsum("ij,ij->i", w / run_len, y_sorted)
    w = np.minimum(sp.end, n) - np.maximum(sp.start, n - n_q)
    np.maximum(w, 0, out=w)
    top = np.einsum("ij,ij->i", w / run_len, y_sorted)
    spread = (top - bottom) / n_q[:, 0]
    return np.where(sp.n >= max(min_stocks, 2), spread, np.nan)


def daily_metrics(
    pred: np.ndarray, target: np.ndarray, min_stocks: int, quantile: float | None, want_ic: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ic [D], rankic [D], long-short [D]) per day of pred, target [D, S]; the parts not asked for are NaN.

    ``quantile`` None skips long-short, ``want_ic`` False skips IC and RankIC. Works through blocks
    of `BLOCK_DAYS` days. Each block is fully vectorised; the blocks only bound the temporaries (a
    dozen [days, stocks] arrays) to a few MB each: a whole large grid at once would spend its time
    allocating and streaming memory.
    """
    p, t, m = _pair(pred, target)
    D = p.shape[0]
    ic, rankic, ls = (np.full(D, np.nan) for _ in range(3))

    def block(a: int) -> None:  # writes disjoint slices of the outputs
        b = slice(a, min(a + BLOCK_DAYS, D))
        sp = _sort_runs(p[b], m[b])  # one sort of the predictions serves ranks, constancy and deciles
        if want_ic:
            ic[b], rankic[b] = _ic_from_sorted(p[b], t[b], m[b], sp, min_stocks)
        if quantile is not None:
            ls[b] = _long_short_from_sorted(t[b], m[b], sp, quantile, min_stocks)

    starts = range(0, D, BLOCK_DAYS)
    if len(starts) == 1:
        block(0)
    else:
        # numpy's sorts and reductions release the GIL: blocks on threads use every core
        with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
            list(pool.map(block, starts))
    return ic, rankic, ls


def check_quantile(quantile: float) -> None:
    """Raise ValueError unless 0 < quantile <= 0.5 (the share of names in each long-short leg)."""
    if not 0.0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")


def daily_ic(pred: np.ndarray, target: np.ndarray, min_stocks: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-day Pearson IC and Spearman RankIC over stocks valid (finite) on both sides.

    Args:
        pred: [D, S] predictions, NaN = missing.
        target: [D, S] realised returns, NaN = missing.
        min_stocks: days with fewer valid names are NaN.

    Returns:
        (ic [D], rankic [D]) float64; NaN for days below ``min_stocks`` and for days on which the
        prediction or the target is constant over the valid names (correlation undefined, as in
        scipy; deliberately not 0, see the module docstring).
    """
    ic, rankic, _ = daily_metrics(pred, target, min_stocks, None)
    return ic, rankic


def long_short(
    pred: np.ndarray, target: np.ndarray, quantile: float = 0.1, min_stocks: int = 20
) -> np.ndarray:
    """Per-day long-short return: mean target of the top prediction quantile minus the bottom one.

    On each day with ``n`` valid names (finite on both sides), the top and bottom legs hold
    ``n_q = max(1, floor(n * quantile))`` names by prediction rank. Ties at a leg boundary are split
    evenly rather than by stock order: each member of a tie group gets, as its weight, the share of
    the group that falls inside the leg's ``n_q`` sorted positions, so each leg's weights still sum
    to ``n_q``. Consequences: the result does not depend on column order, and a constant prediction
    earns exactly 0 (both legs are the day's mean).

    Args:
        pred: [D, S] predictions, NaN = missing.
        target: [D, S] realised returns, NaN = missing.
        quantile: fraction of names in each leg, in (0, 0.5].
        min_stocks: days with fewer valid names are NaN.

    Returns:
        [D] float64 daily spread (positive when the model's highest-ranked names out-earn its lowest).
    """
    check_quantile(quantile)
    return daily_metrics(pred, target, min_stocks, quantile, want_ic=False)[2]


def centred_ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise sort of a [R, k] (all finite) -> (order [R, k], average rank - (k + 1) / 2 [R, k] float64).

    rank[r, p] belongs to the name order[r, p]: ties share the mean of their positions' ranks. The tie
    runs are found on the flattened rows, where a run never crosses into the next row (each row's first
    position starts a run), so the running max / min are 1-D scans instead of per-row ones.
    """
    n_rows, k = a.shape
    order = np.argsort(a, axis=1)
    s = np.take_along_axis(a, order, axis=1)
    starts = np.ones((n_rows, k), dtype=bool)  # position p starts a tie run
    np.not_equal(s[:, 1:], s[:, :-1], out=starts[:, 1:])
    flat = np.arange(n_rows * k, dtype=np.int64 if n_rows * k >= 2**30 else np.int32)
    first = np.where(starts.ravel(), flat, 0)
    np.maximum.accumulate(first, out=first)  # first position of each position's run
    ends = np.ones((n_rows, k), dtype=bool)  # position p ends a run
    ends[:, :-1] = starts[:, 1:]
    last = np.where(ends.ravel(), flat, n_rows * k)[::-1]
    last = np.minimum.accumulate(last)[::-1]  # last position of each position's run
    first += last
    rank = first.reshape(n_rows, k).astype(np.float64)
    rank *= 0.5
    # mean 0-based position of the run, minus the row's start and its centre (k - 1) / 2
    rank -= (np.arange(n_rows, dtype=np.float64) * k + (k - 1) / 2.0)[:, None]
    return order, rank
