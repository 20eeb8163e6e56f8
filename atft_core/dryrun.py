"""The dry run: a short training run on the cache, judged by the gate. Pure library, no Prefect.

Writes into `output_dir`:
    gate.json               verdict, criteria, metrics, dataset and config
    val_predictions.parquet Date, Code, pred_{h}d, target_{h}d for the validation days
    test_predictions.parquet the same for the held-out test days (best epoch), when the split has them
    report/                 signal report of the test days (validation days when there are none)
    metrics.csv             one row per epoch
    checkpoint.pt           the best epoch's model, config and dataset fingerprint
    checkpoint.member{k}.pt the same for member k of a seed ensemble (train.ensemble > 1)
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from atft_core.config import AtftConfig
from atft_core.data.cache.store import Cache, open_cache
from atft_core.data.split import make_split
from atft_core.errors import TrainingError
from atft_core.evaluate.baselines import dryrun_baselines
from atft_core.evaluate.controls import control_result, shuffled_target_cache
from atft_core.evaluate.gate import Criterion, GateResult, evaluate_gate
from atft_core.evaluate.report import build_report, report_markdown
from atft_core.rundir import json_safe, write_json
from atft_core.train.ensemble import fit_ensemble
from atft_core.train.gpu_monitor import monitor_for_device
from atft_core.train.trainer import TrainResult, resolve_device

log = logging.getLogger("atft_core.dryrun")


@dataclass
class DryRunResult:
    gate: GateResult
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    gpu: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    report_markdown: str = ""


def run_dryrun(cache_path: str | Path, cfg: AtftConfig, output_dir: str | Path) -> DryRunResult:
    """Train briefly, evaluate, gate. A crash or non-finite loss becomes a failed gate, not a pass.

    With `cfg.train.control_shuffle_seed` set this is a control run: training targets are shuffled
    within each day, so the validation RankIC must sit in the noise band (a leak would show here).
    """
    control_seed = cfg.train.control_shuffle_seed
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = open_cache(cache_path)
    split = make_split(cache, cfg.data)  # the Trainer's own split (same function, same config)
    # control run: train on targets shuffled among each training day's names; validation stays real
    train_cache = cache if control_seed is None else shuffled_target_cache(cache, control_seed, days=split.train)
    # the trainer's own device: its CUDA index is watched, and a CUDA run must show its utilisation
    monitor = monitor_for_device(resolve_device(cfg.train.device))
    monitor.start()
    result: TrainResult | None = None
    error: str | None = None
    loss_finite = True
    try:
        result = fit_ensemble(train_cache, cfg, split=split, monitor=monitor,
                              checkpoint_path=output_dir / "checkpoint.pt")
    except TrainingError as exc:
        error, loss_finite = str(exc), "non-finite" not in str(exc)
        log.error("dry run training failed: %s", exc)
    finally:
        monitor.stop()
    gpu = monitor.summary()

    metrics = _metrics(result, gpu)
    gate = evaluate_gate(metrics, gpu, cfg.gate, completed=result is not None, loss_finite=loss_finite,
                         train_days=metrics["train_days_per_epoch"],
                         leak_suspects=cache.manifest.get("leak_suspects"))
    files: dict[str, Path] = {}
    if result is not None:
        files["metrics.csv"] = write_history(result.history, output_dir / "metrics.csv")
        files["val_predictions.parquet"] = write_predictions(cache, result.val_days, result.val_pred,
                                                             output_dir / "val_predictions.parquet")
        if result.test_pred is not None and result.test_days is not None:
            files["test_predictions.parquet"] = write_predictions(cache, result.test_days, result.test_pred,
                                                                  output_dir / "test_predictions.parquet")
        files.update({path.name: path for path in result.checkpoints if path.exists()})
    rep_md = ""
    if result is not None:
        shown = files.get("test_predictions.parquet", files["val_predictions.parquet"])
        rep = build_report(shown, output_dir / "report", horizon=cache.horizons[0],
                           min_stocks=cfg.data.min_stocks)
        files.update({f"report/{name}": Path(p) for name, p in rep["files"].items()})
        rep_md = report_markdown(rep)
    control = None
    if control_seed is not None and result is not None:
        control = control_result(cache, split, result.val_pred, result.val_days, control_seed,
                                 min_stocks=cfg.data.min_stocks)
        band = control["band"]
        gate.criteria.append(Criterion(
            "control_rankic_in_noise_band", control["rankic"], None, control["inside"],
            f"control run (targets shuffled within each training day): |val RankIC| must be <= "
            f"{'n/a' if band is None else f'{band:.4f}'}"))
        gate.passed = gate.passed and control["inside"]
    scored = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")} \
        if len(split.test) else metrics
    scored = {**scored, "ensemble": metrics.get("ensemble", 1)}
    baselines = dryrun_baselines(cache, split, scored, min_stocks=cfg.data.min_stocks, control=control)
    report = {"passed": gate.passed, "criteria": gate.to_dict()["criteria"], "metrics": metrics, "error": error,
              "baselines": {k: v for k, v in baselines.items() if k != "markdown"},
              "dataset": dataset_info(cache), "config": cfg.to_dict()}
    files["gate.json"] = write_json(output_dir / "gate.json", json_safe(report))
    return DryRunResult(gate=gate, metrics=metrics, history=result.history if result else [], gpu=gpu, files=files,
                        baselines=baselines, report_markdown=rep_md)


def _metrics(result: TrainResult | None, gpu: dict[str, Any]) -> dict[str, Any]:
    if result is None:
        return {"val_rankic": None, "val_ic": None, "val_rankic_ir": None, "val_sharpe": None,
                "gpu_util_mean": gpu.get("util_mean"), "epoch_seconds": None, "train_days_per_epoch": 0,
                "epochs": 0}
    best = result.val_metrics
    h0 = min(best)
    hist = result.history
    test = {}
    if result.test_metrics:
        t = result.test_metrics[h0]
        test = {"test_rankic": t["rankic"], "test_ic": t["ic"], "test_rankic_ir": t["rankic_ir"],
                "test_sharpe": t["ls_sharpe"], "test_days": len(result.test_days),
                "test_per_horizon": {f"{h}d": m for h, m in result.test_metrics.items()}}
    return {**test,
        "val_rankic": best[h0]["rankic"], "val_ic": best[h0]["ic"], "val_rankic_ir": best[h0]["rankic_ir"],
        "val_sharpe": best[h0]["ls_sharpe"], "val_ls_mean": best[h0]["ls_mean"], "val_days": len(result.val_days),
        "per_horizon": {f"{h}d": m for h, m in best.items()},
        "best_epoch": result.best_epoch, "epochs": len(hist),
        "gpu_util_mean": gpu.get("util_mean"), "gpu_mem_peak_mb": gpu.get("mem_peak_mb"),
        "epoch_seconds": float(np.mean([r["seconds"] for r in hist])),
        "train_days_per_epoch": result.train_days_per_epoch,
        "final_train_loss": hist[-1]["train_loss"], "rss_mb": hist[-1]["rss_mb"],
        # epochs above counts every member's; each member's own best epoch and scores are here
        "ensemble": max(1, len(result.members)),
        **({"members": result.members} if len(result.members) > 1 else {}),
    }


def dataset_info(cache: Cache) -> dict[str, Any]:
    m = cache.manifest
    return {"fingerprint": m["fingerprint"], "source": m.get("source"), "cache": str(cache.path),
            "stocks": m["shape"]["stocks"], "days": m["shape"]["days"], "features": m["shape"]["features"],
            "horizons": m["horizons"], "first_date": m["dates"][0], "last_date": m["dates"][-1]}


def write_history(history: list[dict[str, Any]], path: Path) -> Path:
    cols: list[str] = []
    for rec in history:
        cols += [k for k in rec if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(history)
    return path


def write_predictions(cache: Cache, days: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    """Long format: one row per (validation day, stock with a row that day)."""
    d_idx, s_idx = np.nonzero(cache.valid[days])
    cols: dict[str, Any] = {
        "Date": pl.Series(np.asarray(cache.dates)[days][d_idx]).str.to_date(),
        "Code": np.asarray(cache.codes)[s_idx],
    }
    for k, h in enumerate(cache.horizons):
        cols[f"pred_{h}d"] = pred[d_idx, s_idx, k]
        cols[f"target_{h}d"] = cache.y[days[d_idx], s_idx, k]
    pl.DataFrame(cols).write_parquet(path)
    return path
