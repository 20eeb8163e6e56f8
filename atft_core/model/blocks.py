"""Building blocks of ATFT-GAT-FAN: frequency adaptive normalisation and the TFT encoder pieces.

Every block documents its input / output shapes. Notation: S stocks (the batch axis), L window days,
F input features, C channels per feature, D model width (``hidden``), H attention heads.

Numerics under ``torch.autocast(..., dtype=torch.bfloat16)``: the FFT, softmaxes and layer norms run in
float32 (FFT has no bf16 kernel and a bf16 softmax over a long axis loses the small weights); the
matmuls are left to autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GLU",
    "AddNorm",
    "FANOutput",
    "FrequencyAdaptiveNorm",
    "GatedResidualNetwork",
    "InterpretableMultiHeadAttention",
    "StaticContext",
    "StaticCovariateEncoder",
    "TemporalFusionBlock",
    "VariableSelectionNetwork",
]


# --------------------------------------------------------------------------------------------------
# FAN
# --------------------------------------------------------------------------------------------------


class FANOutput(NamedTuple):
    """What `FrequencyAdaptiveNorm` returns; every tensor is float32 ``[S, L, F]``."""

    residual: Tensor  # x minus its top-K rFFT components: the stationary part the encoder reads
    removed: Tensor  # the top-K components themselves (residual + removed == x)
    removed_hat: Tensor  # the predictor's estimate of `removed` from `residual`

    def channels(self) -> Tensor:
        """Per-feature input streams for the VSN: ``[S, L, F, 3]`` = (residual, removed, removed_hat)."""
        return torch.stack((self.residual, self.removed, self.removed_hat), dim=-1)

    def aux_loss(self) -> Tensor:
        """Scalar MSE of the predicted against the actual removed part (trainer may add it)."""
        return F.mse_loss(self.removed_hat, self.removed)


class FrequencyAdaptiveNorm(nn.Module):
    """Frequency adaptive normalisation (FAN, Ye et al. 2024) of each stock's input window.

    Per stock and per feature, the window is taken to the frequency domain (rFFT over the L axis), the
    K bins with the largest magnitude are removed (the dominant, non-stationary part: level, trend,
    slow cycles) and transformed back, giving ``x = residual + removed`` exactly.

    Choice (documented because FAN was designed for forecasting, where the removed part's *future* is
    predicted and added to the output): here the model's output is not a time series, so nothing is
    added back to it. Instead the encoder reads three streams per feature (see `FANOutput.channels`):
    the residual, the removed part, and ``removed_hat`` = a small MLP's prediction of the removed
    part from the residual. Keeping the exact removed part as a stream means no information is lost
    (on cross-sectionally z-scored features the window level, often the top bin, carries most of
    the signal); the predicted stream lets the VSN weigh "how much of the slow component the fast
    component explains". `FANOutput.aux_loss` is the reconstruction loss that trains the predictor to
    put the removed part back; the model returns it as ``aux_loss`` and the predictor also learns
    through the main loss via its stream.

    The predictor is an MLP across features at each time step (F -> d_hidden -> F), so the block does
    not need to know the window length when it is built and costs O(S*L*F*d_hidden).

    Input ``x [S, L, F]``; output `FANOutput` of three float32 ``[S, L, F]`` tensors.
    """

    def __init__(self, n_features: int, k: int, d_hidden: int) -> None:
        super().__init__()
        self.k = int(k)
        self.predictor = nn.Sequential(
            nn.Linear(n_features, d_hidden), nn.GELU(), nn.Linear(d_hidden, n_features)
        )

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [S, L, F]`` -> (residual, removed), both float32 ``[S, L, F]``, residual + removed == x."""
        x = x.float()
        length = x.shape[1]
        n_bins = length // 2 + 1
        k = min(self.k, n_bins)
        if k <= 0:
            return x, torch.zeros_like(x)
        # FFT has no bf16 kernel and the reconstruction identity needs float32 anyway.
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.fft.rfft(x, dim=1)  # [S, n_bins, F] complex
            top = spec.abs().topk(k, dim=1).indices
            keep = torch.zeros(spec.shape, dtype=torch.bool, device=x.device).scatter_(1, top, True)
            removed = torch.fft.irfft(spec * keep, n=length, dim=1)
        # Subtracting (rather than a second irfft of the complement) makes the identity exact.
        return x - removed, removed

    def forward(self, x: Tensor) -> FANOutput:
        residual, removed = self.decompose(x)
        removed_hat = self.predictor(residual).float()
        return FANOutput(residual, removed, removed_hat)


# --------------------------------------------------------------------------------------------------
# TFT pieces
# --------------------------------------------------------------------------------------------------


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


VSN_GATES = ("softmax", "sigmoid", "signed")
_ATANH_HALF = math.atanh(0.5)  # 2 tanh(0 + this) = 1: a signed gate starts neutral, like the sigmoid one


class VariableSelectionNetwork(nn.Module):
    """TFT variable selection: a GRN per variable plus a gate per variable (softmax, sigmoid or signed), batched over F.

    Input ``x [..., F, C]`` (C channels per variable: FAN's three streams, the sector-relative one and
    the piecewise code's bins) and optional context ``[..., d_context]``; output
    ``(selected [..., D], weights [..., F])`` float32 weights: with ``gate="softmax"`` (TFT's) they sum
    to 1 over F; with ``gate="sigmoid"`` each lies in (0, 2), with ``gate="signed"`` in (-2, 2); both
    are 1 at a neutral logit and independent of the other variables'.

    Why not TFT's softmax: it makes variables compete, and a variable whose effect is purely
    non-linear (an interaction, an even function: no marginal linear signal) is crowded out by the
    linear ones early in training and then never learnt. Measured on demo seed 0 (validation): the
    planted interaction's capture 0.07 -> 0.12, val RankIC 0.097 -> 0.101 (sigmoid).

    Why signed, the default: the gate is the one place where the model multiplies two variables. The
    selector reads every variable, so ``w_x = 2 tanh(g(...))`` may follow the sign of another one, and
    ``w_x e_x`` is then ``x * sign(gate)``: an interaction that flips a variable's sign. A positive gate
    can only scale x up and down, ``x (1 + c sign(gate))``, which correlates with the interaction at
    most 0.71 (c -> 1) and adds a linear x that is not there. Measured on the tuning seeds (3-epoch
    runs, validation): the interaction's capture 0.05 / 0.14 -> 0.38 / 0.32, val RankIC
    0.115 / 0.115 -> 0.127 / 0.126 (`bench/signal_recipes.md`).

    Batching, for F ~ 400 variables: the per-variable GRNs are stacked weights (``[F, C, 2d]``,
    ``[F, d, d]``, ``[F, d, 2d]``) applied with batched matmuls over the F axis, so a forward is a handful of kernels,
    not 400 module calls. Their width ``d`` (``vsn_var_dim``) is kept small on purpose: a variable
    brings only C numbers per step, and the per-variable embeddings are ``[S, L, F, d]`` tensors that
    dominate this block's cost (TFT's full-width variant would materialise ``[S, L, F, D]``, ~16 GB
    for one 4,000-stock day at D = 256). The weighted sum of the per-variable embeddings, each mapped
    to D by its own linear map ``W_f [d, D]``, ``sum_f w_f e_f W_f``, is a single
    ``[N, F*d] @ [F*d, D]`` matmul, so nothing of size F*D per sample is ever built.

    Two departures from TFT's per-variable GRN, both because ``d`` is tiny: no layer norm (over ~4
    numbers it would normalise away the magnitude of a 3-number input, which is the signal, and on
    CPU it cost more than the rest of the block; the embeddings are mixed, projected and then pass
    the LSTM's add & norm), and no dropout on the ``[F, N, d]`` tensors (the selection GRN and the
    temporal block carry the dropout).

    The selection weights come from one GRN over the flattened input (``F*C -> D -> F``) that also
    reads the static context, as in TFT.
    """

    def __init__(
        self,
        n_vars: int,
        d_in: int,
        d_var: int,
        d_model: int,
        dropout: float = 0.0,
        d_context: int | None = None,
        gate: str = "softmax",
    ) -> None:
        super().__init__()
        if gate not in VSN_GATES:
            raise ValueError(f"gate must be one of {', '.join(VSN_GATES)}, got {gate!r}")
        self.n_vars, self.d_in, self.d_var, self.gate = n_vars, d_in, d_var, gate
        # Skip | first layer, and GLU value | gate, each share one stacked weight: on CPU one bmm
        # with a 2d-wide output is ~40 % cheaper than two d-wide ones, split included.
        self.w_in = nn.Parameter(torch.empty(n_vars, d_in, 2 * d_var))
        self.w_hidden = nn.Parameter(torch.empty(n_vars, d_var, d_var))
        self.w_glu = nn.Parameter(torch.empty(n_vars, d_var, 2 * d_var))
        self.b_in = nn.Parameter(torch.zeros(n_vars, 1, 2 * d_var))
        self.b_hidden = nn.Parameter(torch.zeros(n_vars, 1, d_var))
        self.b_glu = nn.Parameter(torch.zeros(n_vars, 1, 2 * d_var))
        self.out = nn.Linear(n_vars * d_var, d_model)
        self.selector = GatedResidualNetwork(n_vars * d_in, d_model, n_vars, dropout, d_context)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The fan-in scaling nn.Linear uses, applied per variable.
        for w in (self.w_in, self.w_hidden, self.w_glu):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lead = x.shape[:-2]
        n = math.prod(lead)
        logits = self.selector(x.reshape(*lead, self.n_vars * self.d_in), context)
        # In float32: with hundreds of variables most softmax weights are small.
        if self.gate == "softmax":
            weights = torch.softmax(logits.float(), dim=-1)  # [..., F]
        elif self.gate == "sigmoid":
            weights = 2.0 * torch.sigmoid(logits.float())
        else:
            weights = 2.0 * torch.tanh(logits.float() + _ATANH_HALF)

        # Variable-major and contiguous (one small copy of the input) so each stacked weight is
        # one bmm over F and no bmm or its backward needs a transposed copy.
        v = x.reshape(n, self.n_vars, self.d_in).transpose(0, 1).contiguous()  # [F, N, C]
        skip, h = torch.baddbmm(self.b_in, v, self.w_in).chunk(2, dim=-1)
        h = torch.baddbmm(self.b_hidden, F.elu(h), self.w_hidden)
        value, gate = torch.baddbmm(self.b_glu, h, self.w_glu).chunk(2, dim=-1)
        e = skip + value * torch.sigmoid(gate)  # [F, N, d]

        w_col = weights.reshape(n, self.n_vars).transpose(0, 1).unsqueeze(-1)  # [F, N, 1]
        mixed = (e * w_col).permute(1, 0, 2).reshape(n, self.n_vars * self.d_var)
        selected = self.out(mixed)
        return selected.reshape(*lead, -1), weights


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


class PiecewiseLinearEncoding(nn.Module):
    """Each value as how far it fills a fixed ladder of bins: ``x [...] -> [..., T]`` in [0, 1].

    Component t is ``clip((x - e_t) / (e_{t+1} - e_t), 0, 1)`` for the edges ``e`` (Gorishniy et al.
    2022, "On Embeddings for Numerical Features in Tabular Deep Learning"). Any piecewise-linear
    function of x with those knots is then one linear map of the code, so a step (the sign of a
    feature) or a threshold (|x| > 1) is as easy for the VSN's per-variable GRN to form as a slope,
    while from the raw value it must be bent out of a few ELUs. Fixed edges suit the cache's inputs:
    they are per-day robust z-scores, clipped, so one ladder fits every feature and every day.
    """

    def __init__(self, edges: Sequence[float]) -> None:
        super().__init__()
        e = torch.tensor(sorted(float(v) for v in edges), dtype=torch.float32)
        if len(e) < 2 or not bool((e[1:] > e[:-1]).all()):
            raise ValueError(f"need at least two distinct edges, got {list(edges)}")
        self.register_buffer("lo", e[:-1], persistent=False)
        self.register_buffer("inv_width", 1.0 / (e[1:] - e[:-1]), persistent=False)

    @property
    def n_bins(self) -> int:
        return len(self.lo)

    def forward(self, x: Tensor) -> Tensor:
        return ((x.unsqueeze(-1) - self.lo) * self.inv_width).clamp(0.0, 1.0)
