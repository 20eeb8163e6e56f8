"""Training targets: the cache's per-day z-score, or per-day ranks mapped to a normal (rank-gauss).

Why rank-gauss: the gate and the report score RankIC, and daily returns are fat-tailed (GARCH,
student-t shocks), so a few names with extreme returns dominate a z-scored target's Huber and IC
terms. Ranked per day and mapped through the normal quantile function, every day has the same
target distribution and an outlier weighs what its rank says. Same-day data only: no look-ahead.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from atft_core.ic import rank_average

TARGET_TRANSFORMS = ("zscore", "rank")


def rank_gauss(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``y [D, S, H]`` raw targets, ``valid [D, S]`` -> ``[D, S, H]`` float32 normal scores per day
    and horizon, ``ndtri((rank - 0.5) / n)`` over the day's valid names with a known target; NaN elsewhere."""
    y = np.asarray(y)
    out = np.full(y.shape, np.nan, dtype=np.float32)
    for h in range(y.shape[2]):
        yh = np.asarray(y[:, :, h], dtype=np.float64)
        m = np.asarray(valid, dtype=bool) & np.isfinite(yh)
        n = m.sum(axis=1, keepdims=True)
        r = rank_average(np.where(m, yh, 0.0), m)
        z = ndtri((r - 0.5) / np.maximum(n, 1))
        out[:, :, h] = np.where(m & (n >= 2), z, np.nan)
    return out


def training_targets(y: np.ndarray, y_z: np.ndarray, valid: np.ndarray, transform: str) -> np.ndarray:
    """The ``[D, S, H]`` target grid the loss reads for `transform` (one of `TARGET_TRANSFORMS`)."""
    if transform == "zscore":
        return y_z
    if transform == "rank":
        return rank_gauss(y, valid)
    raise ValueError(f"loss.target_transform must be one of {TARGET_TRANSFORMS}, got {transform!r}")
