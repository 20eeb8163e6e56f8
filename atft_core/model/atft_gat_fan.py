"""ATFT-GAT-FAN assembled from the blocks: FAN -> TFT encoder -> GAT across stocks -> horizon heads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atft_core.config import ModelConfig
from atft_core.model.cross_section import CrossSectionContext, sector_relative
from atft_core.model.current_day import CurrentDayMLP
from atft_core.model.fan import FrequencyAdaptiveNorm, RemovedForecaster
from atft_core.model.graph import GraphAttentionLayer, build_edges_fixed
from atft_core.model.long_history import LongHistoryEncoder
from atft_core.model.static import StaticCovariateEncoder
from atft_core.model.temporal import TemporalFusionBlock
from atft_core.model.variable_selection import PiecewiseLinearEncoding, VariableSelectionNetwork

__all__ = ["ATFTGATFAN", "RETURN_FEATURE_CANDIDATES", "ModelOutput", "build_model", "resolve_return_feature"]

logger = logging.getLogger("atft_core.model")

# Auto choice of the feature whose window correlation builds the graph, in order of preference.
RETURN_FEATURE_CANDIDATES: tuple[str, ...] = ("returns_1d", "return_1d", "ret_1d")

_FAN_STREAMS = {"streams": 3, "normalise": 1}  # (residual, removed, removed_hat) or the residual alone


class ModelOutput(NamedTuple):
    """What `ATFTGATFAN.forward` returns for a batch of S rows (H horizons, Q quantile levels)."""

    pred: Tensor  # [S, H] float32 point forecast per horizon (its own output unit, not the median quantile)
    quantiles: Tensor | None  # [S, H, Q] float32 in ``cfg.quantiles`` order, non-crossing; None without quantiles
    aux_loss: Tensor  # scalar: cfg.fan_aux_weight x FAN's reconstruction loss, ready to add to the loss


class HorizonHead(nn.Module):
    """One horizon's head: ``[S, D] -> ([S] point forecast, [S, Q] quantiles or None)``.

    Quantiles are produced non-crossing by construction: the lowest is free, each next one adds a
    softplus (positive) increment, so ``q_0.1 <= q_0.5 <= q_0.9`` always holds.
    """

    def __init__(self, d_model: int, n_quantiles: int) -> None:
        super().__init__()
        d_hidden = max(8, d_model // 2)
        self.n_quantiles = n_quantiles
        self.body = nn.Sequential(nn.Linear(d_model, d_hidden), nn.GELU())
        self.out = nn.Linear(d_hidden, 1 + n_quantiles)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.out(self.body(h)).float()
        point = out[:, 0]
        if self.n_quantiles == 0:
            return point, None
        first, steps = out[:, 1:2], F.softplus(out[:, 2:])
        return point, torch.cat((first, first + torch.cumsum(steps, dim=1)), dim=1)


class ATFTGATFAN(nn.Module):
    """Cross-sectional return model: per-stock temporal encoder, then attention across the day's stocks.

    Args:
        n_features: F, input features per day.
        horizons: forecast horizons in days, e.g. ``(1, 5, 10, 20)``; one head each.
        cfg: sizes (`ModelConfig`).
        return_feature_idx: feature whose window builds the correlation graph (see `build_model`).

    ``forward(x [S, L, F] float, static [S, 2] long, day_id [S] long, x_long [S, N, F + 1] or None)``
    returns a `ModelOutput` (``x_long``: the long-history blocks of `atft_core.train.long_history`,
    required when ``cfg.long_blocks > 0``):

    - ``pred [S, H]`` float32: the point forecast per horizon, from its own output unit
      (not the median quantile), so the trainer's Huber / RankIC / Sharpe terms act on a unit that
      the quantile (pinball) loss, if used, does not pull around.
    - ``quantiles [S, H, Q]`` float32 in ``cfg.quantiles`` order (the order the loss pairs them with
      their levels), non-crossing across levels, or ``None`` when ``cfg.quantiles`` is empty.
    - ``aux_loss`` scalar: ``cfg.fan_aux_weight`` x FAN's auxiliary loss (the reconstruction of the
      removed frequency components, or with ``fan_mode`` "normalise" the one-step forecast of them),
      already weighted so the trainer can add it as is (the FAN predictor or forecaster also learns
      through ``pred``).

    ``static`` holds (section id, sector id); -1 means unknown and ids beyond the tables fold into
    their last row. ``day_id`` says which rows share a trading day: graph edges never cross days.
    NaN inputs are read as 0 (the cache's neutral z-score).

    ``torch.compile``: `encode` (FAN + TFT) and `decode` (GAT + heads) have no data-dependent Python
    control flow; edge building (`build_edges_fixed`: fixed-shape topk and sort, no host sync) is
    between them. Compiling the whole model works (checked on CPU) with graph breaks at the
    LSTM (Dynamo does not trace RNNs by default; it runs as its cuDNN kernel) and at the edges;
    `decode` compiles with ``fullgraph=True``; inductor leaves FAN's complex FFT to eager kernels.
    On CUDA ``index_add_`` (graph aggregation) is not bitwise deterministic run to run.
    """

    def __init__(
        self,
        n_features: int,
        horizons: Sequence[int],
        cfg: ModelConfig,
        return_feature_idx: int = 0,
    ) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if not horizons:
            raise ValueError("horizons must name at least one forecast horizon")
        if not 0 <= return_feature_idx < n_features:
            raise ValueError(f"return_feature_idx {return_feature_idx} is outside 0..{n_features - 1}")
        bad_q = [q for q in cfg.quantiles if not 0.0 < q < 1.0]
        if bad_q:
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {bad_q}")
        self.cfg = cfg
        self.n_features = int(n_features)
        self.horizons = tuple(int(h) for h in horizons)
        self.quantiles = tuple(float(q) for q in cfg.quantiles)
        if len(set(self.quantiles)) != len(self.quantiles):
            raise ValueError(f"quantiles must be distinct, got {self.quantiles}")
        # Heads emit quantiles in ascending order (that is how they stay non-crossing); this puts
        # them back into the configured order.
        rank = sorted(range(len(self.quantiles)), key=lambda i: self.quantiles[i])
        self.register_buffer("_quantile_order", torch.tensor([rank.index(i) for i in range(len(rank))],
                                                             dtype=torch.long), persistent=False)
        self.return_feature_idx = int(return_feature_idx)
        d = int(cfg.hidden)

        if cfg.fan_mode not in _FAN_STREAMS:
            raise ValueError(f"fan_mode must be one of {sorted(_FAN_STREAMS)}, got {cfg.fan_mode!r}")
        if cfg.graph_history == "long" and cfg.long_blocks < 1:
            raise ValueError("graph_history 'long' needs long_blocks >= 1")
        self.fan = FrequencyAdaptiveNorm(n_features, cfg.fan_k, d)
        self.forecaster = RemovedForecaster(n_features, d) if cfg.fan_mode == "normalise" else None
        self.long_history = (LongHistoryEncoder(n_features, cfg.long_blocks, d, cfg.dropout)
                             if cfg.long_blocks else None)
        self.static_encoder = StaticCovariateEncoder(cfg.n_sections, cfg.n_sectors, cfg.static_dim, d,
                                                     cfg.dropout)
        self.piecewise = PiecewiseLinearEncoding(cfg.piecewise_edges) if cfg.piecewise_edges else None
        bins = self.piecewise.n_bins if self.piecewise is not None else 0
        streams = _FAN_STREAMS[cfg.fan_mode] + int(cfg.sector_relative_inputs) + bins
        self.vsn = VariableSelectionNetwork(n_features, streams, cfg.vsn_var_dim, d, cfg.dropout,
                                            d_context=d, gate=cfg.vsn_gate)
        self.temporal = TemporalFusionBlock(d, cfg.attn_heads, cfg.lstm_layers, cfg.dropout)
        # the forecast day's raw values (their sector deviations and code when those streams are on)
        day_inputs = n_features * (1 + int(cfg.sector_relative_inputs) + bins)
        self.current_day = (CurrentDayMLP(day_inputs, cfg.current_day_width, d, cfg.dropout)
                            if cfg.current_day_width else None)
        self.cross_section = CrossSectionContext(d, cfg.dropout) if cfg.cross_section else None
        gat_heads = tuple(cfg.gat_heads) or (1,)
        # A shorter heads tuple than layers repeats its last entry (HPO may vary the layer count).
        self.gat = nn.ModuleList(
            GraphAttentionLayer(d, d, gat_heads[min(i, len(gat_heads) - 1)], cfg.dropout)
            for i in range(cfg.gat_layers)
        )
        self.heads = nn.ModuleList(HorizonHead(d, len(self.quantiles)) for _ in self.horizons)
        logger.info(
            "ATFT-GAT-FAN built: %s parameters (features=%d, hidden=%d, horizons=%s, quantiles=%s)",
            f"{self.n_parameters:,}", n_features, d, self.horizons, self.quantiles or "none",
        )

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, x: Tensor, static: Tensor, day_id: Tensor, x_long: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """Per-stock encoder: ``x [S, L, F], static [S, 2], day_id [S] -> (h [S, D], FAN aux loss scalar)``.

        Per stock apart from one thing: with ``sector_relative_inputs`` each feature's deviation from
        its day's sector mean (rows sharing ``day_id`` and sector) is one more VSN stream. With
        ``fan_mode`` "normalise" every stream is computed from FAN's residual, and the removed part
        enters as its forecast's vector; with ``long_blocks`` the long-history vector is added too.
        """
        x = x.float()
        observed = torch.isfinite(x)
        x = torch.where(observed, x, torch.zeros_like(x))
        fan = self.fan(x)
        ctx = self.static_encoder(static)
        if self.forecaster is None:
            base, streams = x, fan.channels()  # [S, L, F, 3]
            aux = fan.aux_loss()
        else:
            base, streams = fan.residual, fan.residual.unsqueeze(-1)  # [S, L, F, 1]
            forecast, inside = self.forecaster(fan.removed)
            aux = self.forecaster.aux_loss(fan.removed, inside)
        day = [x[:, -1]]
        if self.cfg.sector_relative_inputs:
            rel = sector_relative(base, observed, static[:, 1], day_id)
            streams = torch.cat((streams, rel.unsqueeze(-1)), dim=-1)
            day.append(rel[:, -1])
        if self.piecewise is not None:
            code = self.piecewise(base)  # [S, L, F, T]
            streams = torch.cat((streams, code), dim=-1)
            day.append(code[:, -1].flatten(1))
        selected, _ = self.vsn(streams, ctx.selection.unsqueeze(1))  # [S, L, D]
        h = self.temporal(selected, ctx.h0, ctx.c0, ctx.enrichment)
        if self.current_day is not None:
            h = h + self.current_day(torch.cat(day, dim=1)).to(h.dtype)
        if self.forecaster is not None:
            h = h + self.forecaster.embed(forecast).to(h.dtype)
        if self.long_history is not None:
            if x_long is None:
                raise ValueError("this model reads long-history blocks (long_blocks > 0): pass x_long [S, N, F + 1]")
            h = h + self.long_history(x_long).to(h.dtype)
        return h, self.cfg.fan_aux_weight * aux

    def edges(self, x: Tensor, static: Tensor, day_id: Tensor, x_long: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
        """The day graph for this batch: ``(edge_index [2, E], keep [E])`` from `build_edges_fixed`.

        With ``graph_history`` "long" the correlation is over the return feature's window followed by
        its long-history block means (each block mean scaled by sqrt(B), the spread of a B-day sum of
        daily values), so two stocks are linked by months of co-movement, not by ten days of it.
        """
        ret = x[:, :, self.return_feature_idx].float()
        if self.cfg.graph_history == "long" and x_long is not None:
            blocks = x_long[:, :, self.return_feature_idx].float() * float(self.cfg.long_block_days) ** 0.5
            ret = torch.cat((ret, blocks.flip(1)), dim=1)  # oldest block first, then the window
        return build_edges_fixed(ret, day_id, static[:, 1], self.cfg.graph_topk, self.cfg.graph_sector_edges)

    def decode(self, h: Tensor, edge_index: Tensor, edge_mask: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        """GAT across stocks and heads: ``h [S, D] -> (pred [S, H], quantiles [S, H, Q] or None)``."""
        for layer in self.gat:
            h = layer(h, edge_index, edge_mask=edge_mask)
        outs = [head(h) for head in self.heads]
        pred = torch.stack([p for p, _ in outs], dim=1)
        if not self.quantiles:
            return pred, None
        ascending = torch.stack([q for _, q in outs if q is not None], dim=1)
        return pred, ascending.index_select(2, self._quantile_order)

    def forward(self, x: Tensor, static: Tensor, day_id: Tensor, x_long: Tensor | None = None) -> ModelOutput:
        if x.dim() != 3 or x.shape[2] != self.n_features:
            raise ValueError(f"x must be [S, L, {self.n_features}], got {tuple(x.shape)}")
        h, aux_loss = self.encode(x, static, day_id, x_long)
        if self.cross_section is not None:
            h = self.cross_section(h, static[:, 1], day_id)
        if len(self.gat):
            edge_index, edge_mask = self.edges(x, static, day_id, x_long)
        else:  # gat_layers = 0 (an ablation): no graph to build
            edge_index, edge_mask = torch.empty(2, 0, dtype=torch.long, device=x.device), None
        pred, quantiles = self.decode(h, edge_index, edge_mask)
        return ModelOutput(pred=pred, quantiles=quantiles, aux_loss=aux_loss)


def resolve_return_feature(feature_names: Sequence[str], wanted: str = "") -> int:
    """Index of the feature that builds the graph: ``wanted`` exactly if given, else the first of
    `RETURN_FEATURE_CANDIDATES` present, else 0."""
    names = list(feature_names)
    if wanted:
        if wanted not in names:
            raise ValueError(
                f"graph_return_feature '{wanted}' is not among the {len(names)} features "
                f"(first ones: {names[:10]})"
            )
        return names.index(wanted)
    for candidate in RETURN_FEATURE_CANDIDATES:
        if candidate in names:
            return names.index(candidate)
    return 0


def build_model(
    n_features: int,
    horizons: Sequence[int],
    cfg: ModelConfig,
    feature_names: list[str],
) -> ATFTGATFAN:
    """Build ATFT-GAT-FAN, resolving ``cfg.graph_return_feature`` against ``feature_names``."""
    if len(feature_names) != n_features:
        raise ValueError(f"{len(feature_names)} feature names given for n_features={n_features}")
    idx = resolve_return_feature(feature_names, cfg.graph_return_feature)
    logger.info("graph edges from the window of feature '%s' (index %d)",
                feature_names[idx] if feature_names else "?", idx)
    return ATFTGATFAN(n_features, tuple(horizons), cfg, return_feature_idx=idx)
