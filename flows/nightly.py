"""The nightly product, after the gate and the HPO study (pipeline mode "hpo").

```
study's best config ──► challenger run (gpu pool, the recipe) ──► champion decision ──┐
tonight's LightGBM peer ─────────────────────────────────────────────────┘           ├─► tomorrow's ranks
earlier nights' ranks + the returns since ──► live record ──► health ─ degraded? ─► run ends "Degraded" (alert)
```

The challenger is its own run folder (`...-challenger-<id>`, like `atft train` makes): its
checkpoint, stage.json and report, trained where every training runs (the gpu stage). The registry
lives under the work root (`registry/`) and goes to the S3 mirror with the runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run as current_flow_run

from atft_core.config import AtftConfig
from atft_core.hpo.space import apply_params
from atft_core.nightly.health import Health
from atft_core.nightly.promotion import Decision
from atft_core.retention import in_use
from atft_core.rundir import new_run_dir
from atft_core.s3.client import S3Options
from atft_core.workroot import WorkRoot
from flows.gpu_stage import run_gpu_stage
from flows.remote_stage import Deadlines
from tasks.cache import CacheRef
from tasks.gate import failed_criteria
from tasks.nightly import decision_task, fit_peer_task, live_task, mirror_registry_task, ranks_task
from tasks.publish import mirror_run


@dataclass
class NightResult:
    challenger_run: str
    decision: Decision
    ranks: str | None  # the registry's ranks file, None without a champion
    health: Health

    def summary(self) -> dict[str, Any]:
        return {"challenger_run": self.challenger_run, "decision": self.decision.to_dict(), "ranks": self.ranks,
                "health": self.health.to_dict()}


def challenger_config(cfg: AtftConfig, best_params: dict[str, Any]) -> AtftConfig:
    """The study's best configuration with the nightly recipe (a seed ensemble of short runs)."""
    out = apply_params(cfg, best_params)
    out.train.ensemble = cfg.nightly.challenger_ensemble
    out.train.max_epochs = cfg.nightly.challenger_epochs
    return out


def run_night(*, cache: CacheRef, run_dir: Path, cfg: AtftConfig, best_params: dict[str, Any], root: WorkRoot,
              out: Path, gpu_deployment: str | None, deadlines: Deadlines, target: S3Options | None) -> NightResult:
    logger = get_run_logger()
    challenger_cfg = challenger_config(cfg, best_params)
    challenger = new_run_dir(out, "challenger", current_flow_run.id or "local")
    logger.info("challenger: the study's best config %s, %d x %d epochs, in %s", best_params or "(base config)",
                challenger_cfg.train.ensemble, challenger_cfg.train.max_epochs, challenger)
    try:
        with in_use(challenger, uses=[cache.path]):
            stage = run_gpu_stage(gpu_deployment, cache.path, challenger_cfg.to_dict(), challenger, deadlines,
                                  exchange=target)
    except BaseException:
        if target is not None:  # what the failed challenger left, without hiding why it failed
            try:
                mirror_run(str(challenger), target)
            except Exception as exc:
                logger.error("mirroring the failed challenger's folder %s also failed: %s", challenger, exc)
        raise
    if target is not None:
        mirror_run(str(challenger), target)
    registry = str(root.registry)
    config = cfg.to_dict()
    peer = fit_peer_task(cache.path, config)
    decision = decision_task(registry, cache.path, str(challenger), config, str(run_dir), peer,
                             challenger_failed="" if stage.passed else failed_criteria(stage.gate) or "failed")
    ranks = ranks_task(registry, cache.path, config, str(run_dir), peer)
    health = live_task(registry, cache.path, config, str(run_dir))
    if target is not None:
        mirror_registry_task(registry, target)
    return NightResult(str(challenger), decision, ranks, health)
