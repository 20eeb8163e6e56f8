"""TFT's static covariate encoder: a stock's (section, sector) ids -> the four static context vectors.

Shapes use the notation of `atft_core.model`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from atft_core.model.gated import GatedResidualNetwork

__all__ = ["StaticContext", "StaticCovariateEncoder"]


class StaticContext(NamedTuple):
    """Context vectors produced by `StaticCovariateEncoder`, each ``[S, D]``."""

    selection: Tensor  # conditions the VSN's variable weights
    enrichment: Tensor  # conditions the temporal features before attention
    h0: Tensor  # LSTM initial hidden state
    c0: Tensor  # LSTM initial cell state


class StaticCovariateEncoder(nn.Module):
    """Embeds (section id, sector id) and derives TFT's four static context vectors.

    Input ``static [S, 2]`` long: column 0 section id, column 1 sector id. Output `StaticContext`
    of four ``[S, D]`` tensors.

    Id handling: each table has ``n + 1`` rows. Row 0 is "unknown" (any negative id, e.g. -1);
    ids 0..n-1 map to rows 1..n, and ids >= n fold into the last row, so an unseen code at inference
    time can never index out of range.
    """

    def __init__(self, n_sections: int, n_sectors: int, static_dim: int, d_model: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.sizes = (int(n_sections), int(n_sectors))
        self.section = nn.Embedding(n_sections + 1, static_dim)
        self.sector = nn.Embedding(n_sectors + 1, static_dim)
        d_in = 2 * static_dim
        self.grns = nn.ModuleList(
            GatedResidualNetwork(d_in, d_model, d_model, dropout) for _ in range(4)
        )

    @staticmethod
    def fold(ids: Tensor, size: int) -> Tensor:
        """Map raw ids to table rows: negative -> 0, id -> id + 1, id >= size -> size."""
        return torch.where(ids < 0, torch.zeros_like(ids), ids.clamp(max=size - 1) + 1)

    def forward(self, static: Tensor) -> StaticContext:
        if static.dim() != 2 or static.shape[1] != 2:
            raise ValueError(f"static must be [S, 2] (section id, sector id), got {tuple(static.shape)}")
        static = static.long()
        emb = torch.cat(
            (self.section(self.fold(static[:, 0], self.sizes[0])),
             self.sector(self.fold(static[:, 1], self.sizes[1]))),
            dim=-1,
        )
        return StaticContext(*(grn(emb) for grn in self.grns))
