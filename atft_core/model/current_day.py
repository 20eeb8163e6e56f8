"""A dense path from the forecast day's own inputs to the encoding, beside the temporal encoder.

Shapes use the notation of `atft_core.model`.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CurrentDayMLP"]


class CurrentDayMLP(nn.Module):
    """A dense path from the forecast day's own inputs: ``x [S, C] -> [S, D]``, added to the encoding.

    Why: the encoder mixes variables linearly (the VSN's weighted sum) before anything nonlinear
    across variables, and its recurrent path learns the slow temporal parts first; an effect that
    lives in how two of today's values combine (a sign that flips with another feature) or in a
    threshold is then learnt late or never. A plain two-layer MLP on the same inputs learns it
    within two epochs. The last layer starts at zero, so at initialisation the model is unchanged.
    """

    def __init__(self, d_in: int, width: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(width, width), nn.GELU())
        self.out = nn.Linear(width, d_model)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))
