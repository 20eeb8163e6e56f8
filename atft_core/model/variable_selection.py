"""How each input variable enters the encoder: a piecewise-linear code of its value and TFT's variable selection.

Shapes use the notation of `atft_core.model`. Under bf16 autocast the selection weights are computed in float32 (with
hundreds of variables most weights are small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atft_core.model.gated import GatedResidualNetwork

__all__ = ["VSN_GATES", "PiecewiseLinearEncoding", "VariableSelectionNetwork"]


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
    linear ones early in training and then never learnt; a gate per variable lets it grow on its own.

    Why signed, the default: the gate is the one place where the model multiplies two variables. The
    selector reads every variable, so ``w_x = 2 tanh(g(...))`` may follow the sign of another one, and
    ``w_x e_x`` is then ``x * sign(gate)``: an interaction that flips a variable's sign. A positive gate
    can only scale x up and down, ``x (1 + c sign(gate))``, which correlates with the interaction at
    most 0.71 (c -> 1) and adds a linear x that is not there. On the demo the signed gate captures
    the planted interaction that the positive one misses (the comparison is in `bench/signal_recipes.md`).

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
        # with a 2d-wide output is cheaper than two d-wide ones, split included.
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
