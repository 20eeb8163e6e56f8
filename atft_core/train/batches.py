"""Day batches: whole trading days (cross-sections) cut from the dense grid by slicing.

A batch holds one or more complete days; a day is never split, because every cross-sectional loss
and metric is defined per day. The window of L days for all stocks of day t is the slice
``x[t-L+1 : t+1]``, so gathering a batch is a slice plus a row selection: no per-sample Python.

Shapes (S = stocks in the batch summed over its days, L = window, F = features, H = horizons,
G = days in the batch, N = widest day):
    x [S, L, F]   static [S, 2]   y [S, H]   y_z [S, H]   y_mask [S, H]   day_id [S]   stock [S]
    layout [G, N]: row of each (day, slot), S for an empty slot (the loss's per-day view)

No host sync: every index (which stocks trade on each day, the day layout) is computed on the host
from the cache's numpy `valid` grid before anything runs on the device, then uploaded; nothing is
read back. `gather_static` pads every day to all S_total stocks of the cache (rows without data are
masked), so a batch's shapes depend only on the number of days: the step can be compiled with
static shapes or captured as a CUDA graph.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from atft_core.data.cache.store import Cache
from atft_core.train.long_history import BlockHistory


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
    layout: torch.Tensor | None = None  # [G, N] long: row of each (day, slot), S = empty slot
    x_long: torch.Tensor | None = None  # [S, N_blocks, F + 1] long-history blocks (None when off)


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

    With ``long_blocks > 0`` every batch also carries ``x_long``: the block means of each row's
    history (`BlockHistory`: ``long_blocks`` blocks of ``long_block_days`` days, days up to the row's).
    """

    def __init__(self, cache: Cache, window: int, device: torch.device | str = "cpu",
                 feature_dtype: torch.dtype | None = None, long_blocks: int = 0, long_block_days: int = 20):
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
        self.valid_host = np.asarray(cache.valid).astype(bool)  # [T, S_total]: batch indices are made from it
        self.history = (BlockHistory(cache.x, self.valid_host, long_blocks, long_block_days, self.device)
                        if long_blocks > 0 else None)

    def gather(self, days: np.ndarray | torch.Tensor) -> Batch:
        """Batch of whole days: every stock with a row on that day (targets may be unknown).

        Rows are day-major, stocks ascending within a day. Indices come from the host copy of
        `valid` (numpy), so the device is never asked for a shape.
        """
        days_np = self._days(days)
        L = self.window
        per_day = [np.flatnonzero(self.valid_host[t]) for t in days_np]  # host: [S_t] each
        counts = np.array([len(i) for i in per_day], dtype=np.int64)
        stock_np = np.concatenate(per_day) if per_day else np.zeros(0, np.int64)
        day_np = np.repeat(np.arange(len(days_np)), counts)
        time_np = days_np[day_np][:, None] + np.arange(-L + 1, 1)[None, :]  # [S, L] cache day of each step
        width = int(counts.max()) if len(counts) else 0
        layout_np = np.full((len(days_np), width), len(stock_np), dtype=np.int64)
        slot = np.arange(len(stock_np)) - np.repeat(np.cumsum(counts) - counts, counts)
        layout_np[day_np, slot] = np.arange(len(stock_np))
        stock, day_id, t_idx, days_t, layout = (self._upload(a) for a in
                                                (stock_np, day_np, time_np, days_np, layout_np))
        x = self.x[t_idx, stock[:, None]]  # [S, L, F] in one gather
        rows = days_t[day_id]
        return self._finish(x, stock, rows, day_id, days_t, layout, self.valid[rows, stock])

    def gather_static(self, days: np.ndarray | torch.Tensor, n_days: int | None = None) -> Batch:
        """Batch of whole days padded to a fixed shape: every stock of the cache on every day.

        S = n_days * S_total rows, day k at rows k*S_total .. (k+1)*S_total - 1. A stock without a row
        that day (and every row of the padding days added when ``len(days) < n_days``) has
        ``y_mask`` False and ``day_id`` -1, so it is left out of the loss and never joins a real
        day's graph. The shapes depend only on ``n_days``; the loss and gradients equal `gather`'s.
        """
        days_np = self._days(days)
        n_days = len(days_np) if n_days is None else int(n_days)
        if len(days_np) > n_days:
            raise ValueError(f"{len(days_np)} days do not fit a static batch of {n_days}")
        real = np.arange(n_days) < len(days_np)
        padded = np.concatenate([days_np, np.full(n_days - len(days_np), days_np[0] if len(days_np) else
                                                  self.window - 1, np.int64)])
        n_stocks = self.x.shape[1]
        L = self.window
        time_np = padded[:, None] + np.arange(-L + 1, 1)[None, :]  # [G, L]
        t_idx, days_t, real_t = self._upload(time_np), self._upload(padded), self._upload(real)
        x = self.x[t_idx].permute(0, 2, 1, 3).reshape(n_days * n_stocks, L, -1)  # [G*S_total, L, F]
        stock = torch.arange(n_stocks, device=self.device).repeat(n_days)
        k = torch.arange(n_days, device=self.device).repeat_interleave(n_stocks)
        rows = days_t.repeat_interleave(n_stocks)
        has_row = self.valid[rows, stock].bool() & real_t.repeat_interleave(n_stocks)
        day_id = torch.where(has_row, k, torch.full_like(k, -1))
        layout = torch.arange(n_days * n_stocks, device=self.device).view(n_days, n_stocks)
        return self._finish(x, stock, rows, day_id, days_t[: len(days_np)], layout, has_row)

    # -- helpers ---------------------------------------------------------------------------------
    def _days(self, days: np.ndarray | torch.Tensor) -> np.ndarray:
        days_np = (days.cpu().numpy() if torch.is_tensor(days) else np.asarray(days)).astype(np.int64).reshape(-1)
        short = days_np[days_np < self.window - 1]
        if len(short):
            raise IndexError(f"day {int(short[0])} has fewer than window={self.window} days of history")
        return days_np

    def _upload(self, a: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor without a blocking copy (pinned + non_blocking on CUDA)."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _finish(self, x: torch.Tensor, stock: torch.Tensor, rows: torch.Tensor, day_id: torch.Tensor,
                days_t: torch.Tensor, layout: torch.Tensor, has_row: torch.Tensor) -> Batch:
        y = self.y[rows, stock]
        y_z = self.y_z[rows, stock]
        mask = torch.isfinite(y_z) & torch.isfinite(y) & has_row.bool()[:, None]
        # the categories of that day (a stock that changed section is seen in the section it had then)
        x_long = self.history.gather(rows, stock) if self.history is not None else None
        return Batch(x=x.float(), static=self.static[rows, stock].long(), y=y,
                     y_z=torch.where(mask, y_z, torch.zeros_like(y_z)), y_mask=mask,
                     day_id=day_id, stock=stock, days=days_t, layout=layout, x_long=x_long)
