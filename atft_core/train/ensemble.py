"""Seed ensembles: ATFT-GAT-FAN trained K times from different seeds, its predictions averaged.

On the demo every training run peaks within two or three epochs: with ~460 training days the data,
not the training time, is the limit, and two runs from different seeds differ by about as much as
the changes the ablations measure. Averaging K runs removes that part of the error.

Members differ in ``train.seed`` (member k trains with ``seed + k``: batch order, initial weights,
dropout) and, with ``train.ensemble_alternate_encoding`` (off by default), in how they read their
inputs: even members use the configured piecewise-linear code of each value
(`PiecewiseLinearEncoding`), odd members the raw values only. Alternating pays when the two kinds
learn different parts of the signal, as they do with sigmoid VSN gates (the code the extreme-value
part, the raw values the interaction); with the default signed gates a coded member learns both, so
by default members share the encoding (`python -m bench.signal --recipes`; `bench/signal_recipes.md`).
Validation still picks each member's epoch. The ensemble's prediction is the members' mean in
the model's own units (they share the target scale, so a plain mean ranks the same as a mean of
ranks in practice), and its metrics are computed from that mean exactly as a single model's are.

Member 0 is the run ``ensemble = 1`` would make, bit for bit, and writes ``checkpoint.pt``; member k
writes ``checkpoint.member{k}.pt`` next to it, with its own config inside (an odd member's says
``piecewise_edges: []``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from atft_core.config import AtftConfig
from atft_core.data.cache.store import Cache
from atft_core.data.split import Split, make_split
from atft_core.train.trainer import EpochCallback, Trainer, TrainResult, score_days

log = logging.getLogger("atft_core.train.ensemble")


def member_checkpoint(path: Path, member: int) -> Path:
    """Member 0 keeps ``path`` (a one-member run is the plain run); member k gets ``<stem>.member<k><suffix>``."""
    return path if member == 0 else path.with_name(f"{path.stem}.member{member}{path.suffix}")


def member_configs(cfg: AtftConfig) -> list[AtftConfig]:
    """Member k's config: ``train.seed + k``; odd members without the piecewise code when alternating."""
    out = []
    for member in range(int(cfg.train.ensemble)):
        mcfg = copy.deepcopy(cfg)
        mcfg.train.seed = cfg.train.seed + member
        if member % 2 and cfg.train.ensemble_alternate_encoding:
            mcfg.model.piecewise_edges = ()
        out.append(mcfg)
    return out


def fit_ensemble(cache: Cache, cfg: AtftConfig, *, split: Split | None = None, monitor: Any = None,
                 checkpoint_path: Path | None = None, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train ``cfg.train.ensemble`` members and return the ensemble's `TrainResult`.

    ``history`` holds every member's epochs, each record with its ``member``; ``best_epoch`` and
    ``checkpoint`` are member 0's; ``members`` lists each member's seed, inputs, best epoch and scores.
    """
    configs = member_configs(cfg)
    split = split or make_split(cache, cfg.data)
    results: list[TrainResult] = []
    for member, mcfg in enumerate(configs):
        if len(configs) > 1:
            log.info("ensemble member %d of %d (train.seed %d, %s)", member + 1, len(configs), mcfg.train.seed,
                     _inputs(mcfg))
        trainer = Trainer(cache, mcfg, split=split, monitor=monitor, on_epoch=_tagged(on_epoch, member))
        ckpt = None if checkpoint_path is None else member_checkpoint(checkpoint_path, member)
        results.append(trainer.fit(checkpoint_path=ckpt))
        del trainer  # one member's grid and weights in memory at a time
    return combine(cache, results, cfg.data.min_stocks, seeds=[c.train.seed for c in configs],
                   inputs=[_inputs(c) for c in configs])


def _inputs(cfg: AtftConfig) -> str:
    return "raw values + piecewise code" if cfg.model.piecewise_edges else "raw values"


def combine(cache: Cache, results: list[TrainResult], min_stocks: int, seeds: list[int],
            inputs: list[str] | None = None) -> TrainResult:
    """The members' mean prediction, scored on the same days; a single result comes back as it is."""
    first = results[0]
    members = [_member_summary(r, seed, cache.horizons[0]) for r, seed in zip(results, seeds, strict=True)]
    for m, what in zip(members, inputs or [], strict=False):
        m["inputs"] = what
    for m, r in enumerate(results):
        for rec in r.history:
            rec["member"] = m
    checkpoints = [r.checkpoint for r in results if r.checkpoint is not None]
    if len(results) == 1:
        first.members, first.checkpoints = members, checkpoints
        return first
    val_pred = _mean([r.val_pred for r in results])
    test_pred = None if first.test_pred is None else _mean([r.test_pred for r in results])
    h0 = cache.horizons[0]
    val_metrics = score_days(cache, first.val_days, val_pred, min_stocks)
    test_metrics = {} if test_pred is None else score_days(cache, first.test_days, test_pred, min_stocks)
    if test_metrics:
        log.info("ensemble of %d: val RankIC %.4f, test RankIC %.4f (members' mean %.4f / %.4f)", len(results),
                 val_metrics[h0]["rankic"], test_metrics[h0]["rankic"],
                 float(np.mean([m["val_rankic"] for m in members])),
                 float(np.mean([m["test_rankic"] for m in members])))
    return TrainResult(history=[rec for r in results for rec in r.history], best_epoch=first.best_epoch,
                       best_rankic=val_metrics[h0]["rankic"], val_pred=val_pred, val_days=first.val_days,
                       train_days_per_epoch=first.train_days_per_epoch,
                       loss_finite=all(r.loss_finite for r in results), checkpoint=first.checkpoint,
                       val_metrics=val_metrics, test_pred=test_pred, test_days=first.test_days,
                       test_metrics=test_metrics, members=members,
                       checkpoints=checkpoints)


def _mean(preds: list[np.ndarray]) -> np.ndarray:
    # every member predicts the same cells (NaN exactly where the stock had no row), so no nanmean
    return np.mean(np.stack(preds), axis=0, dtype=np.float64).astype(np.float32)


def _member_summary(r: TrainResult, seed: int, h0: int) -> dict[str, Any]:
    test = r.test_metrics.get(h0, {}).get("rankic") if r.test_metrics else None
    return {"seed": seed, "best_epoch": r.best_epoch, "epochs": len(r.history),
            "val_rankic": r.val_metrics[h0]["rankic"], "test_rankic": test}


def _tagged(on_epoch: EpochCallback | None, member: int) -> EpochCallback | None:
    if on_epoch is None:
        return None

    def call(rec: dict[str, Any]) -> None:
        rec["member"] = member
        on_epoch(rec)

    return call
