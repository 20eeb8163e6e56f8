"""Train / validation / test splits of a cache's trading days: which days are usable, the embargo between parts,
and the walk-forward windows (several consecutive test windows, each with its own split).

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


def walk_forward_windows(days: np.ndarray, horizons: tuple[int, ...], cfg: SplitConfig, windows: int,
                         window_days: int, source: str = "cache") -> list[Split]:
    """`windows` consecutive test windows of `window_days` trading-day indices at the end of `days`, oldest first.

    Window k is the test part of its own `walk_forward_split` of the days up to its last day: train
    on everything before it, its own ``cfg.val_days`` validation days and embargoes (``cfg.test_days``
    is replaced by `window_days`). So each window is scored by a model that saw only the days before
    it minus the embargo, as a model retrained every `window_days` days would be. Windows are cut by
    day index, as `walk_forward_split` cuts its test part; a day missing from `days` (too few names)
    leaves a window shorter, never shifts it.
    """
    if windows < 1 or window_days < 1:
        raise ValueError(f"walk-forward needs windows >= 1 and window_days >= 1, got {windows} x {window_days}")
    days = np.sort(np.asarray(days))
    if len(days) == 0:
        raise DatasetError(source, "no usable trading days for a walk-forward split; provide a longer history")
    last = int(days[-1])
    part = SplitConfig(val_days=cfg.val_days, test_days=window_days, embargo_days=cfg.embargo_days)
    out = []
    for k in range(windows):
        end = last - (windows - 1 - k) * window_days  # the window's last day
        split = walk_forward_split(days[days <= end], horizons, part, source)
        if len(split.test) == 0:
            raise DatasetError(source, f"walk-forward window {k + 1} of {windows} has no usable day; "
                                       "lower --window-days or --windows")
        out.append(split)
    return out


def make_walk_forward(cache: Cache, cfg: DataConfig, windows: int, window_days: int) -> list[Split]:
    """`walk_forward_windows` over the cache's eligible days (full window, enough names) under `cfg`."""
    days = eligible_days(cache, cfg.window, cfg.min_stocks)
    return walk_forward_windows(days, cache.horizons, cfg.split, windows, window_days,
                                source=str(cache.manifest.get("source", cache.path)))
