"""Block means of each stock's long history, gathered per batch from cumulative sums over the cache.

A stock's window (``data.window`` days) is too short for effects of weeks to a year (momentum over
months, reversal over a year, slow drifts of value and size). Reading a year day by day through the
encoder would cost S x 250 x F per step; instead the long history is summarised as the means of each
feature over the last N blocks of B days, which costs S x N x F and is computed in O(1) per block
from cumulative sums:

    block j of day t (j = 0 the most recent) covers days ``(t - (j+1)B, t - jB]``,
    mean = (C[t - jB] - C[t - (j+1)B]) / (K[t - jB] - K[t - (j+1)B]),

with ``C`` the running sum of the stock's valid, finite values and ``K`` their count. Only days up
to t enter (no look-ahead); a block before the panel's start or without a valid row is 0 (the
cache's neutral z-score) and its count is 0, so a young listing is read as "no history", not as a
history of zeros: the model gets each block's fraction of valid days as one more input.

Shapes: sums ``[T + 1, S_total, F]`` float32 (row 0 is the empty prefix), a gathered batch
``[S, N, F + 1]`` (the block means, then the block's valid fraction). Memory: one more copy of
the feature grid (float32) on the grid's device.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["BlockHistory"]


class BlockHistory:
    """Cumulative sums of a ``[T, S_total, F]`` grid and the block-mean gather over them."""

    def __init__(self, x: np.ndarray, valid: np.ndarray, blocks: int, block_days: int,
                 device: torch.device | str = "cpu") -> None:
        if blocks < 1 or block_days < 1:
            raise ValueError(f"blocks and block_days must be >= 1, got {blocks} and {block_days}")
        self.blocks, self.block_days = int(blocks), int(block_days)
        n_days, n_stocks, n_feat = x.shape
        self.sums = torch.zeros((n_days + 1, n_stocks, n_feat), dtype=torch.float32)
        self.counts = torch.zeros((n_days + 1, n_stocks), dtype=torch.float32)
        run = np.zeros((n_stocks, n_feat), dtype=np.float64)  # float64 running sum: no drift over years
        run_n = np.zeros(n_stocks, dtype=np.float64)
        for t in range(n_days):  # day by day keeps the peak at one float64 day, not a float64 grid
            ok = np.asarray(valid[t], dtype=bool)
            xt = np.asarray(x[t], dtype=np.float64)
            run += np.where(ok[:, None] & np.isfinite(xt), xt, 0.0)
            run_n += ok
            self.sums[t + 1] = torch.from_numpy(run.astype(np.float32))
            self.counts[t + 1] = torch.from_numpy(run_n.astype(np.float32))
        self.device = torch.device(device)
        self.sums, self.counts = self.sums.to(self.device), self.counts.to(self.device)

    def gather(self, rows: torch.Tensor, stock: torch.Tensor) -> torch.Tensor:
        """``rows [S]`` cache day of each row, ``stock [S]`` its stock -> ``[S, N, F + 1]`` float32.

        Entry ``[:, j, :F]`` is the mean of block j (j = 0 ends on the row's day), ``[:, j, F]`` the
        fraction of the block's B days with a valid row.
        """
        offsets = torch.arange(self.blocks + 1, device=rows.device) * self.block_days  # [N + 1]
        # prefix index: C[t + 1] holds days 0..t; clamped at 0 = nothing before the panel's start
        ends = (rows[:, None] + 1 - offsets[None, :]).clamp_min(0)  # [S, N + 1]
        st = stock[:, None].expand_as(ends)
        c = self.sums[ends, st]  # [S, N + 1, F]
        k = self.counts[ends, st]  # [S, N + 1]
        total = c[:, :-1] - c[:, 1:]
        n = k[:, :-1] - k[:, 1:]
        means = total / n.clamp_min(1.0).unsqueeze(-1)
        return torch.cat((means, (n / self.block_days).unsqueeze(-1)), dim=-1)
