"""TFT's gated pieces, from which the larger blocks are built: `GLU`, `AddNorm`, `GatedResidualNetwork`.

Shapes use the notation of `atft_core.model`. Under bf16 autocast the layer norms run in float32
(autocast's own policy); the linear maps are left to autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GLU", "AddNorm", "GatedResidualNetwork"]


class GLU(nn.Module):
    """Gated linear unit: ``a * sigmoid(b)`` with ``[a, b] = Linear(dropout(x))``.

    ``[..., d_in] -> [..., d_out]`` (d_out defaults to d_in).
    """

    def __init__(self, d_in: int, d_out: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_in, 2 * (d_out or d_in))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.proj(self.dropout(x)).chunk(2, dim=-1)
        return a * torch.sigmoid(b)


class AddNorm(nn.Module):
    """``LayerNorm(x + skip)``: ``[..., d], [..., d] -> [..., d]``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.norm(x + skip)


class GatedResidualNetwork(nn.Module):
    """TFT gated residual network: ``LayerNorm(skip(a) + GLU(W2 ELU(W1 a + W3 c)))``.

    Input ``a [..., d_in]``, optional context ``c [..., d_context]`` broadcastable against ``a``'s
    leading dims (pass ``[S, 1, d_context]`` for a per-stock context over ``[S, L, d_in]``).
    Output ``[..., d_out]``.
    """

    def __init__(
        self,
        d_in: int,
        d_hidden: int,
        d_out: int,
        dropout: float = 0.0,
        d_context: int | None = None,
    ) -> None:
        super().__init__()
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.fc1 = nn.Linear(d_in, d_hidden)
        # The context enters as a bias on the hidden layer (no own bias: fc1 already has one).
        self.context = nn.Linear(d_context, d_hidden, bias=False) if d_context else None
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.gate = GLU(d_hidden, d_out, dropout)
        self.norm = AddNorm(d_out)

    def forward(self, a: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.fc1(a)
        if self.context is not None and context is not None:
            h = h + self.context(context)
        h = self.fc2(F.elu(h))
        return self.norm(self.gate(h), self.skip(a))
