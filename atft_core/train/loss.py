"""Multi-horizon training loss: the per-day terms of `loss_terms`, weighted and summed.

Per horizon and per day (a batch holds one or more whole days; ``day_id`` says which):

    huber(pred, y_z)                                   # on the cross-sectionally standardised target
    + quantile_weight * pinball(quantiles, y_z)        # only when the model has quantile heads
    + rankic_weight * (1 - RankIC surrogate)
    + cs_ic_weight  * (1 - IC)
    + sharpe_weight * (-Sharpe of the prediction-weighted long-short)

Each term is averaged over the batch's days (days with fewer than 2 valid names are skipped), then
horizons are combined with ``cfg.horizon_weights`` (default equal, normalised to sum 1). Because
every term is a per-day quantity, the loss of a 2-day batch is exactly the mean of the two 1-day
losses: the loss does not change meaning with ``days_per_batch``. The terms, the RankIC surrogate's
design and the Sharpe term's definition are in `atft_core.train.loss_terms`.

No term is wrapped in try/except: a non-finite prediction gives a non-finite loss, which the
trainer reports and stops on, rather than training on a silently broken step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from atft_core.config import LossConfig
from atft_core.model import ModelOutput
from atft_core.train.loss_terms import (
    EPS,
    Days,
    HuberTerm,
    ICTerm,
    LossTerm,
    PinballTerm,
    RankICTerm,
    SharpeTerm,
    pad_days,
)

# Three fixed orders, each for a reason. The logged parts follow _PART_ORDER (the trainer's train_*
# columns). The terms are evaluated in _EVAL_ORDER and their penalties summed in _SUM_ORDER: float
# sums depend on order, so these fix the loss's rounding and the order autograd accumulates the terms'
# gradients (another order trains to different last bits).
_PART_ORDER = ("huber", "pinball", "ic", "rankic_sur", "sharpe")
_EVAL_ORDER = ("huber", "pinball", "sharpe", "ic", "rankic_sur")
_SUM_ORDER = ("huber", "pinball", "rankic_sur", "ic", "sharpe")


def _horizon_weights(cfg: LossConfig, horizons: Sequence[int], device: torch.device) -> Tensor:
    """[H] float32 weight of each horizon in column order (not normalised), from ``cfg``."""
    unknown = sorted(set(cfg.horizon_weights) - set(horizons))
    if unknown:
        raise ValueError(f"loss.horizon_weights names horizon(s) {unknown} not among {tuple(horizons)}")
    # an unlisted horizon keeps its default weight rather than silently dropping out: 1, except the
    # shortest (the one the gate judges), whose default is cfg.shortest_horizon_weight
    shortest = min(horizons)
    w = [float(cfg.horizon_weights.get(h, cfg.shortest_horizon_weight if h == shortest else 1.0)) for h in horizons]
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"loss.horizon_weights must be >= 0 with a positive sum, got {w}")
    return _constant(tuple(w), device)


def _horizon_mix(cfg: LossConfig, horizons: Sequence[int], days: Days, dtype: torch.dtype) -> Tensor:
    """[H] weights that combine the horizons' losses, summing to 1 over the horizons with a usable day."""
    # a horizon with no usable day in this batch drops out instead of adding a gradient-free constant
    w = _horizon_weights(cfg, horizons, days.p.device).to(dtype) * days.ok.any(0).to(dtype)
    return w / w.sum().clamp(min=EPS)


_CONSTANTS: dict[tuple, Tensor] = {}


def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """A small constant tensor on `device`, uploaded once (a fresh upload every step is a blocking copy)."""
    key = (values, str(device), dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return t


def loss_terms(cfg: LossConfig, out: ModelOutput, quantile_levels: Sequence[float],
               dtype: torch.dtype) -> list[LossTerm]:
    """The terms of the loss for ``cfg`` (pinball only when ``out`` has quantile heads)."""
    terms: list[LossTerm] = [HuberTerm(delta=cfg.huber_delta)]
    if out.quantiles is not None:
        levels = _constant(tuple(float(q) for q in quantile_levels), out.pred.device, dtype)
        terms.append(PinballTerm(quantiles=out.quantiles, levels=levels, weight=cfg.quantile_weight))
    terms += [ICTerm(weight=cfg.cs_ic_weight), RankICTerm(anchors=cfg.rank_anchors, weight=cfg.rankic_weight),
              SharpeTerm(weight=cfg.sharpe_weight)]
    return terms


def _check_shapes(out: ModelOutput, y_z: Tensor, y_mask: Tensor, day_id: Tensor, horizons: Sequence[int],
                  quantile_levels: Sequence[float]) -> None:
    pred = out.pred
    if pred is None or pred.dim() != 2:
        raise ValueError("out.pred must be a [stocks, horizons] tensor")
    S, H = pred.shape
    if H != len(horizons) or y_z.shape != (S, H) or y_mask.shape != (S, H) or day_id.shape != (S,):
        raise ValueError(
            f"shape mismatch: pred {tuple(pred.shape)}, y_z {tuple(y_z.shape)}, y_mask "
            f"{tuple(y_mask.shape)}, day_id {tuple(day_id.shape)}, horizons {tuple(horizons)}"
        )
    quantiles = out.quantiles
    if quantiles is not None and (quantiles.shape[:2] != (S, H) or quantiles.shape[2] != len(quantile_levels)):
        raise ValueError(
            f"out.quantiles {tuple(quantiles.shape)} needs [stocks, horizons, Q] with "
            f"Q = len(quantile_levels) = {len(quantile_levels)}"
        )


def compute_loss(
    out: ModelOutput,
    y_z: Tensor,
    y_mask: Tensor,
    day_id: Tensor,
    cfg: LossConfig,
    horizons: Sequence[int],
    quantile_levels: Sequence[float] = (),
    layout: Tensor | None = None,
    sync: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Multi-horizon loss of one batch of whole days.

    Args:
        out: the model's output: ``pred`` [S, H] and ``quantiles`` [S, H, Q] or None (its ``aux_loss``
            is the trainer's to add).
        y_z: [S, H] cross-sectionally standardised targets (NaN allowed where missing).
        y_mask: [S, H] bool, True where the target is valid (NaN targets are dropped too).
        day_id: [S] long, the day of each row.
        cfg: loss weights and surrogate settings.
        horizons: the H horizons, in column order.
        quantile_levels: the Q levels of ``out.quantiles`` (required when it is given).
        layout: [G, N] long, row of each (day, slot) with S for an empty slot (`Batch.layout`, built
            on the host). Given, the loss makes no host sync; None derives it from ``day_id`` (one
            ``unique`` and one read of the widest day: two syncs).
        sync: False keeps the parts on the device as 0-dim tensors (the trainer sums them and reads
            them once per log interval); True reads them as floats (one transfer).

    Returns:
        (scalar loss with gradient, parts): parts are detached floats (tensors when ``sync`` is
        False), each the horizon-weighted mean of a per-day-averaged term: ``huber``, ``pinball``
        (with quantile heads), ``rankic_sur``, ``ic``, ``sharpe``, ``total``, plus ``n_days`` (days
        in the batch, a float: it is a shape).
    """
    _check_shapes(out, y_z, y_mask, day_id, horizons, quantile_levels)
    pred = out.pred
    # the statistics need float32 even when the model ran under bf16 autocast
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    idx, G = pad_days(day_id) if layout is None else (layout, layout.shape[0])
    days = Days.lay_out(pred, y_z, y_mask, idx, dtype)
    by_name = {t.name: t for t in loss_terms(cfg, out, quantile_levels, dtype)}
    values = {k: days.day_mean(by_name[k].per_day(days)) for k in _EVAL_ORDER if k in by_name}  # [H] each
    penalties = [by_name[k].penalty(values[k]) for k in _SUM_ORDER if k in by_name]
    loss_h = penalties[0]
    for penalty in penalties[1:]:
        loss_h = loss_h + penalty
    w = _horizon_mix(cfg, horizons, days, dtype)
    total = (w * loss_h).sum() + 0.0 * pred.sum()  # keeps a graph even when no day counts
    names = [k for k in _PART_ORDER if k in values]
    stacked = torch.stack([(w * values[k]).sum() for k in names] + [total]).detach()
    # one device->host transfer for all parts (sync=True), not one sync per .item()
    read = stacked.cpu().tolist() if sync else stacked.unbind()
    parts = dict(zip([*names, "total"], read, strict=True))
    parts["n_days"] = float(G)
    return total, parts
