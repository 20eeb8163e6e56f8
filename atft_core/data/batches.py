"""Day batches: whole trading days (cross-sections) cut from the dense grid by slicing.

A batch holds one or more complete days; a day is never split, because every cross-sectional loss
and metric is defined per day. The window of L days for all stocks of day t is the slice
``x[t-L+1 : t+1]``, so gathering a batch is a slice plus a row selection: no per-sample Python.

Shapes (S = stocks in the batch summed over its days, L = window, F = features, H = horizons):
    x [S, L, F]   static [S, 2]   y [S, H]   y_z [S, H]   y_mask [S, H]   day_id [S]   stock [S]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from atft_core.config import DataConfig, SplitConfig
from atft_core.data.cache import Cache
from atft_core.data.indexing import day_index  # noqa: F401  (re-exported: part of the batch API)
from atft_core.errors import DatasetError


@dataclass
class Batch:
    x: torch.Tensor  # [S, L, F] float
    static: torch.Tensor  # [S, 2] long: section id, sector id of the row's day
    y: torch.Tensor  # [S, H] raw forward returns (NaN unknown)
    y_z: torch.Tensor  # [S, H] standardised target, 0 where unknown
    y_mask: torch.Tensor  # [S, H] bool: target known
    day_id: torch.Tensor  # [S] long: position of the row's day within `days`
    stock: torch.Tensor  # [S] long: stock index in the cache
    days: torch.Tensor  # [n_days] long: cache day indices


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


class DayBatchSampler:
    """Yields arrays of day indices: whole days, `days_per_batch` at a time, reshuffled each epoch.

    The order is a function of (seed, epoch) only, so a run is reproducible and every epoch sees
    every day exactly once (a cap exists only through an explicit `max_days`).
    """

    def __init__(self, days: np.ndarray, days_per_batch: int = 1, shuffle: bool = True, seed: int = 0,
                 max_days: int | None = None):
        if days_per_batch < 1:
            raise ValueError("days_per_batch must be >= 1")
        self.days = np.asarray(days, dtype=np.int64)
        self.days_per_batch = days_per_batch
        self.shuffle = shuffle
        self.seed = seed
        self.max_days = max_days
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_days(self) -> np.ndarray:
        order = self.days
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.days)
        return order[: self.max_days] if self.max_days else order

    def __iter__(self):
        order = self.epoch_days()
        for i in range(0, len(order), self.days_per_batch):
            yield order[i:i + self.days_per_batch]

    def __len__(self) -> int:
        n = len(self.days) if not self.max_days else min(self.max_days, len(self.days))
        return -(-n // self.days_per_batch)


class GridTensors:
    """The cache's arrays as torch tensors on one device, and the batch gather over them.

    On a GPU with room, the whole grid is copied once (optionally as bf16/fp16) and every batch is
    a device-side slice. On CPU the tensors share memory with the memory map (zero copy).
    """

    def __init__(self, cache: Cache, window: int, device: torch.device | str = "cpu",
                 feature_dtype: torch.dtype | None = None):
        self.window = window
        self.device = torch.device(device)
        with warnings.catch_warnings():  # read-only memory map: tensors are never written to
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(cache.x)
            y = torch.from_numpy(cache.y)
            y_z = torch.from_numpy(cache.y_z)
            valid = torch.from_numpy(cache.valid)
        if feature_dtype is not None:
            x = x.to(feature_dtype)
        self.x = x.to(self.device, non_blocking=True)
        self.y = y.to(self.device)
        self.y_z = y_z.to(self.device)
        self.valid = valid.to(self.device)
        self.static = torch.from_numpy(cache.static).to(self.device)

    def gather(self, days: np.ndarray | torch.Tensor) -> Batch:
        """Batch of whole days: every stock with a row on that day (targets may be unknown)."""
        days_t = torch.as_tensor(np.asarray(days), dtype=torch.long, device=self.device)
        L = self.window
        xs, stocks, day_ids = [], [], []
        for k, t in enumerate(days_t.tolist()):
            if t < L - 1:
                raise IndexError(f"day {t} has fewer than window={L} days of history")
            idx = torch.nonzero(self.valid[t], as_tuple=False).squeeze(1)  # [S_t]
            xs.append(self.x[t - L + 1:t + 1].index_select(1, idx).transpose(0, 1))  # [S_t, L, F]
            stocks.append(idx)
            day_ids.append(torch.full_like(idx, k))
        stock = torch.cat(stocks)
        day_id = torch.cat(day_ids)
        rows = days_t[day_id]
        y = self.y[rows, stock]
        y_z = self.y_z[rows, stock]
        mask = torch.isfinite(y_z) & torch.isfinite(y)
        # the categories of that day (a stock that changed section is seen in the section it had then)
        return Batch(x=torch.cat(xs).float(), static=self.static[rows, stock].long(), y=y,
                     y_z=torch.where(mask, y_z, torch.zeros_like(y_z)), y_mask=mask,
                     day_id=day_id, stock=stock, days=days_t)


def make_split(cache: Cache, cfg: DataConfig) -> Split:
    days = eligible_days(cache, cfg.window, cfg.min_stocks)
    return walk_forward_split(days, cache.horizons, cfg.split, source=str(cache.manifest.get("source", cache.path)))
