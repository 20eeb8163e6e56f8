"""Is predictor A better than predictor B on the same days? The paired daily RankIC difference and its interval.

Two predictors scored on the same days share each day's market: their daily RankICs move together,
so the question is answered by the daily difference ``d_t = RankIC_A(t) - RankIC_B(t)``, not by two
separate means. Its mean is the estimate; its 95 % interval comes from a **moving-block bootstrap**
(Kunsch 1989): blocks of consecutive days are drawn with replacement, so the autocorrelation within
a block (regimes, overlapping features, a signal that changes strength over weeks) stays in every
resample and widens the interval as it should. Chosen over a HAC / Newey-West t because it needs
no normal approximation of a mean of a few dozen skewed daily values, and because pooling is
natural: each series (a walk-forward window of one seed) is resampled on its own, never across the
border between two windows or seeds, and the resamples are concatenated. The generator has a fixed
seed, so the same inputs always give the same interval. The block length defaults to ``n ** (1/3)``
days of the shortest series (the rate that balances the bias and variance of a block-bootstrap
variance, Hall, Horowitz & Jing 1995), at least 1.

Days on which either RankIC is NaN (too few names, a constant prediction) are dropped from the pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from atft_core.ic import daily_ic

N_BOOT = 2000
SEED = 0


@dataclass(frozen=True)
class PairedDifference:
    """Mean daily difference A - B over `n_days` paired days with its bootstrap interval [lo, hi]."""

    mean: float
    lo: float
    hi: float
    n_days: int
    block: int  # days per bootstrap block
    level: float = 0.95

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def daily_rankic(pred: np.ndarray, target: np.ndarray, min_stocks: int = 20) -> np.ndarray:
    """``[D]`` Spearman RankIC of each day of ``pred`` / ``target`` ``[D, S]`` (NaN = no row), as `daily_ic`."""
    return daily_ic(pred, target, min_stocks=min_stocks)[1]


def paired_daily_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` of two ``[D]`` daily series on the same days, in day order, days where either is NaN dropped."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired daily series must be 1-D and of the same length, got {a.shape} and {b.shape}")
    d = a - b
    return d[np.isfinite(d)]


def default_block(lengths: Sequence[int]) -> int:
    """``round(n ** (1/3))`` days for the shortest series of length n, at least 1."""
    return max(1, round(min(lengths) ** (1.0 / 3.0)))


def _block_sums(x: np.ndarray, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot]`` sums of moving-block resamples of `x`, each cut to ``len(x)`` days."""
    n = len(x)
    b = min(block, n)
    k = math.ceil(n / b)
    starts = rng.integers(0, n - b + 1, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(b)).reshape(n_boot, k * b)[:, :n]
    return x[idx].sum(axis=1)


def block_bootstrap_interval(series: Sequence[np.ndarray], *, block: int | None = None, level: float = 0.95,
                             n_boot: int = N_BOOT, seed: int = SEED) -> PairedDifference:
    """Mean of the concatenated `series` and its moving-block bootstrap percentile interval.

    Each series (e.g. one walk-forward window's daily differences) is resampled within itself and
    the resamples are concatenated, so the pooled mean weighs every day once. NaNs must already be
    dropped (`paired_daily_difference`). Raises ValueError when there is no day at all.
    """
    parts = [np.asarray(s, dtype=np.float64) for s in series if len(s)]
    if not parts:
        raise ValueError("no paired day to compare: every day lacked one of the two scores")
    if not all(np.isfinite(p).all() for p in parts):
        raise ValueError("series contain NaN: drop unpaired days first (paired_daily_difference)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    block = default_block([len(p) for p in parts]) if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1 day, got {block}")
    rng = np.random.default_rng(seed)
    total = sum(len(p) for p in parts)
    sums = np.zeros(n_boot)
    for p in parts:
        sums += _block_sums(p, block, n_boot, rng)
    means = sums / total
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    mean = float(np.concatenate(parts).mean())
    return PairedDifference(mean=mean, lo=float(lo), hi=float(hi), n_days=total, block=block, level=level)


def compare_daily(a: Sequence[np.ndarray], b: Sequence[np.ndarray], **kwargs) -> PairedDifference:
    """A - B over several paired series (one per window and seed): `paired_daily_difference` of each, pooled.

    ``a[i]`` and ``b[i]`` are the two predictors' ``[D_i]`` daily RankICs on the same days of series i.
    Keyword arguments go to `block_bootstrap_interval`.
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} series of A against {len(b)} of B: pair them one to one")
    return block_bootstrap_interval([paired_daily_difference(x, y) for x, y in zip(a, b, strict=True)], **kwargs)
