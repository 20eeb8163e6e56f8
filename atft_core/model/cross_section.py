"""Cross-sectional context: values relative to their day's sector (and market) means.

Why: a return predictor ranks names against each other, and much of what is predictable is
relative (a name against its sector that day). The GAT reads a few sampled neighbours with learnt
attention, which only estimates a sector mean. Two exact forms live here:

- `sector_relative`: each input feature minus its day's sector mean, an input stream of the
  encoder (on by default, ``model.sector_relative_inputs``; the LightGBM peer gets the same);
- `CrossSectionContext`: the encoder's hidden states relative to their sector-day and day means
  (off by default, ``model.cross_section``).

Grouping is sort-based (`group_rows`), so neither reads anything back to the host on a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atft_core.model.gated import GLU, AddNorm

# day_id * stride + sector id + 1 is a unique (day, sector) key for any sector id below the stride;
# a constant keeps the key free of a host read of the largest id.
_KEY_STRIDE = 1 << 20


def group_rows(key: Tensor) -> Tensor:
    """``key [S]`` long -> ``[S]`` long: a group number in ``[0, S)`` shared by the rows with equal keys.

    Sort-based, so nothing is read back to the host (``torch.unique`` would sync on CUDA): a group's
    number is the sorted position of its first row.
    """
    s = key.shape[0]
    sorted_key, order = torch.sort(key)
    first = torch.ones_like(sorted_key, dtype=torch.bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    pos = torch.arange(s, device=key.device)
    start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), dim=0).values
    return torch.empty_like(start).scatter_(0, order, start)


def group_mean(h: Tensor, key: Tensor, weight: Tensor | None = None) -> Tensor:
    """``h [S, K]``, ``key [S]`` long -> ``[S, K]`` mean of h over the rows sharing each row's key.

    ``weight [S, K]`` (0/1) leaves cells out of their group's mean (missing values); a group with no
    weight in a column gets a mean of 0 there.
    """
    g = group_rows(key)
    w = torch.ones_like(h) if weight is None else weight.to(h.dtype)
    sums = torch.zeros_like(h).index_add_(0, g, h * w)
    cnt = torch.zeros_like(h).index_add_(0, g, w)
    return (sums / cnt.clamp(min=1))[g]


def sector_relative(x: Tensor, valid: Tensor, sector: Tensor, day_id: Tensor) -> Tensor:
    """Each input relative to its day's sector: ``x [S, L, F]`` -> ``[S, L, F]``, 0 where x is missing.

    ``valid [S, L, F]`` bool marks observed values (only they enter a mean); ``sector [S]`` (-1 =
    unknown, a group of its own) and ``day_id [S]`` group the rows, so days never mix. This is the
    peer's "deviation from the day's sector mean", given to the model as an input stream: a handful
    of sampled graph edges only estimates a sector mean, and the planted sector-relative signal is
    exactly this difference.
    """
    s, length, f = x.shape
    key = day_id.long() * _KEY_STRIDE + sector.long().clamp(min=-1) + 1
    flat = x.reshape(s, length * f)
    mean = group_mean(flat, key, valid.reshape(s, length * f)).reshape(s, length, f)
    return torch.where(valid, x - mean, torch.zeros_like(x))


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
        rel_sector = hf - group_mean(hf, day_id.long() * _KEY_STRIDE + sector)
        rel_day = hf - group_mean(hf, day_id.long())
        return self.norm(self.gate(torch.cat((rel_sector, rel_day), dim=1).to(h.dtype)), h)
