"""Cross-sectional context: each stock's encoding relative to its day's sector and market means.

Why: a return predictor ranks names against each other, and much of what is predictable is
relative (a name against its sector that day). The GAT reads a few sampled neighbours with learnt
attention; this block gives the exact same-day sector mean and day mean of the encodings, which a
handful of sampled edges only estimates. It is architecture, not a feature: it reads the encoder's
hidden states, never the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atft_core.model.blocks import GLU, AddNorm


def group_mean(h: Tensor, key: Tensor) -> Tensor:
    """``h [S, D]``, ``key [S]`` long -> ``[S, D]`` mean of h over the rows sharing each row's key."""
    _, inv = torch.unique(key, return_inverse=True)
    n = int(inv.max()) + 1 if inv.numel() else 0
    sums = torch.zeros(n, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, inv, h)
    cnt = torch.bincount(inv, minlength=n).clamp(min=1).to(h.dtype)
    return (sums / cnt.unsqueeze(1))[inv]


class CrossSectionContext(nn.Module):
    """``h [S, D], sector [S] long, day_id [S] long -> [S, D]``:
    ``LayerNorm(h + GLU([h - sector-day mean, h - day mean]))``. Rows of different days never mix."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = GLU(2 * d_model, d_model, dropout)
        self.norm = AddNorm(d_model)

    def forward(self, h: Tensor, sector: Tensor, day_id: Tensor) -> Tensor:
        hf = h.float()
        sector = sector.long().clamp(min=-1) + 1  # -1 (unknown) is a group of its own
        n_sec = int(sector.max()) + 1 if sector.numel() else 1
        rel_sector = hf - group_mean(hf, day_id.long() * n_sec + sector)
        rel_day = hf - group_mean(hf, day_id.long())
        return self.norm(self.gate(torch.cat((rel_sector, rel_day), dim=1).to(h.dtype)), h)
