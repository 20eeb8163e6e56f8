"""The long-history encoder: block means of each feature over weeks to a year, as one per-stock vector.

Real markets carry effects whose horizon is far longer than a daily window: momentum over months
(skipping the last one), reversal over a year, the slow drift of valuation and size, a volatility
regime. `atft_core.train.long_history.BlockHistory` summarises a stock's history as the means of each
feature over N blocks of B days (e.g. 6 x 20 = 120 days); this block reads them and returns one
``[S, D]`` vector that the model adds to the stock's encoding. The blocks are not tied to any
generator's horizons: the MLP can form any contrast of them (month minus year, a trend, a level).

Input ``[S, N, F + 1]`` (block means, then each block's valid fraction); output ``[S, D]``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LongHistoryEncoder"]


class LongHistoryEncoder(nn.Module):
    """``[S, N, F + 1] -> [S, D]``: LayerNorm over the flattened blocks, then a two-layer GELU MLP."""

    def __init__(self, n_features: int, blocks: int, d_model: int, dropout: float) -> None:
        super().__init__()
        width = blocks * (n_features + 1)
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_model), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d_model, d_model))

    def forward(self, blocks: Tensor) -> Tensor:
        return self.net(blocks.float().flatten(1))
