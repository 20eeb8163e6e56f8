"""Train / validation / test splits of a cache's trading days: which days are usable, and the embargo between parts.

Plain numpy over the cache's `valid` and `y` grids (no torch): evaluation, baselines and training
all take the same `Split`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atft_core.config import DataConfig, SplitConfig
from atft_core.data.cache.store import Cache
from atft_core.errors import DatasetError


def eligible_days(cache: Cache, window: int, min_stocks: int) -> np.ndarray:
    """Days with a full window behind them and at least `min_stocks` names with a known 1st target.

    Vectorised over the whole grid: one reduction, no loop over rows or days.
    """
    counts = (cache.valid & np.isfinite(cache.y[:, :, 0])).sum(axis=1)
    days = np.arange(cache.valid.shape[0])
    return days[(days >= window - 1) & (counts >= min_stocks)]


@dataclass
class Split:
    train: np.ndarray  # cache day indices
    val: np.ndarray
    test: np.ndarray
    embargo: int  # trading days left out between consecutive parts


def walk_forward_split(days: np.ndarray, horizons: tuple[int, ...], cfg: SplitConfig, source: str = "cache") -> Split:
    """Train | embargo | validation | embargo | test, by trading-day index, same dates for every stock.

    The embargo (>= the longest horizon) guarantees that no validation label (returns over
    t+1..t+h) overlaps a training label. Counted in trading days, never calendar days.
    """
    longest = max(horizons)
    embargo = longest if cfg.embargo_days is None else cfg.embargo_days
    if embargo < longest:
        raise ValueError(f"embargo_days={embargo} is shorter than the longest target horizon ({longest}d): "
                         "validation labels would overlap training labels")
    days = np.sort(np.asarray(days))
    need = cfg.val_days + (cfg.test_days + embargo if cfg.test_days else 0) + embargo + 1
    if len(days) < need + 1:
        raise DatasetError(source, f"only {len(days)} usable trading days (after the {longest}-day target horizon, "
                                   f"window and min_stocks filters); the split needs at least {need + 1} "
                                   f"({cfg.val_days} validation + {embargo} embargo + training). Provide a longer "
                                   "history or lower data.split.val_days")
    last = days[-1]
    test = days[days > last - cfg.test_days] if cfg.test_days else days[:0]
    val_end = (test[0] - embargo - 1) if len(test) else last  # inclusive
    val = days[(days <= val_end) & (days > val_end - cfg.val_days)]
    train = days[days < val[0] - embargo]
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(source, "no training or validation days left after the embargo; provide more history")
    return Split(train=train, val=val, test=test, embargo=embargo)


def make_split(cache: Cache, cfg: DataConfig) -> Split:
    """The walk-forward split of the cache's eligible days (full window, enough names) under `cfg`."""
    days = eligible_days(cache, cfg.window, cfg.min_stocks)
    return walk_forward_split(days, cache.horizons, cfg.split, source=str(cache.manifest.get("source", cache.path)))
