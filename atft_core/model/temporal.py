"""TFT's temporal processing: the interpretable multi-head attention and the block around the LSTM.

Shapes use the notation of `atft_core.model`. Under bf16 autocast the attention scores and softmax run in float32 (a
bf16 softmax over a long axis loses the small weights); the matmuls are left to autocast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from atft_core.model.gated import GLU, AddNorm, GatedResidualNetwork

__all__ = ["InterpretableMultiHeadAttention", "TemporalFusionBlock"]


class InterpretableMultiHeadAttention(nn.Module):
    """TFT interpretable multi-head attention.

    Each head has its own query / key projection but all heads share one value projection, and the
    head outputs are averaged (not concatenated), so the averaged attention matrix is a faithful
    importance map over time steps.

    Inputs ``q [B, Lq, D]``, ``k [B, Lk, D]``, ``v [B, Lk, D]``; queries are aligned to the *last* Lq
    key positions, and with ``causal=True`` query i sees keys up to its own position (a last-step
    query, Lq = 1, sees the whole window). Output ``(out [B, Lq, D], attn [B, H, Lq, Lk])``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = int(n_heads)
        # Rounded up so any (hidden, heads) pair an HPO study samples works.
        self.d_head = max(1, math.ceil(d_model / n_heads))
        self.q = nn.Linear(d_model, self.n_heads * self.d_head)
        self.k = nn.Linear(d_model, self.n_heads * self.d_head)
        self.v = nn.Linear(d_model, self.d_head)
        self.out = nn.Linear(self.d_head, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = True) -> tuple[Tensor, Tensor]:
        b, lq, _ = q.shape
        lk = k.shape[1]
        qh = self.q(q).view(b, lq, self.n_heads, self.d_head).transpose(1, 2)  # [B, H, Lq, dh]
        kh = self.k(k).view(b, lk, self.n_heads, self.d_head).transpose(1, 2)  # [B, H, Lk, dh]
        scores = (qh @ kh.transpose(-1, -2)).float() / math.sqrt(self.d_head)  # [B, H, Lq, Lk]
        if causal:
            pos_q = torch.arange(lq, device=q.device).unsqueeze(1) + (lk - lq)
            future = torch.arange(lk, device=q.device).unsqueeze(0) > pos_q
            scores = scores.masked_fill(future, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        vh = self.v(v).float().unsqueeze(1)  # [B, 1, Lk, dh], shared by every head
        heads = self.dropout(attn) @ vh  # [B, H, Lq, dh]
        return self.out(heads.mean(dim=1)), attn


class TemporalFusionBlock(nn.Module):
    """TFT temporal processing: LSTM, gated skip, static enrichment, attention, position-wise GRN.

    Inputs: ``x [S, L, D]`` (VSN output), ``h0, c0 [S, D]`` (LSTM initial state from the static
    encoder), ``enrichment [S, D]`` (static enrichment context). Output ``[S, D]``: the
    representation at the last time step (the day the forecast is made).

    Only the last step is used as the attention query: the model forecasts from the last day, so a
    full L x L attention would compute L - 1 rows nobody reads.
    """

    def __init__(self, d_model: int, n_heads: int, lstm_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.lstm_layers = int(lstm_layers)
        self.lstm = nn.LSTM(d_model, d_model, num_layers=self.lstm_layers, batch_first=True,
                            dropout=dropout if self.lstm_layers > 1 else 0.0)
        self.lstm_gate = GLU(d_model, dropout=dropout)
        self.lstm_norm = AddNorm(d_model)
        self.enrich = GatedResidualNetwork(d_model, d_model, d_model, dropout, d_context=d_model)
        self.attention = InterpretableMultiHeadAttention(d_model, n_heads, dropout)
        self.attn_gate = GLU(d_model, dropout=dropout)
        self.attn_norm = AddNorm(d_model)
        self.positionwise = GatedResidualNetwork(d_model, d_model, d_model, dropout)
        self.out_gate = GLU(d_model)
        self.out_norm = AddNorm(d_model)

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor, enrichment: Tensor) -> Tensor:
        state = (h0.unsqueeze(0).expand(self.lstm_layers, -1, -1).contiguous(),
                 c0.unsqueeze(0).expand(self.lstm_layers, -1, -1).contiguous())
        # Under autocast x arrives in bf16 while the state (from a LayerNorm) is float32; the LSTM needs
        # one dtype. The weights' dtype is right whether or not autocast then lowers the LSTM itself.
        dtype = self.lstm.weight_ih_l0.dtype
        lstm_out, _ = self.lstm(x.to(dtype), (state[0].to(dtype), state[1].to(dtype)))
        temporal = self.lstm_norm(self.lstm_gate(lstm_out), x)  # [S, L, D]
        enriched = self.enrich(temporal, enrichment.unsqueeze(1))  # [S, L, D]
        last = enriched[:, -1:, :]
        attended, _ = self.attention(last, enriched, enriched, causal=True)  # [S, 1, D]
        h = self.attn_norm(self.attn_gate(attended), last)
        h = self.positionwise(h)
        h = self.out_norm(self.out_gate(h), temporal[:, -1:, :])
        return h.squeeze(1)
