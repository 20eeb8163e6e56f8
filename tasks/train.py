"""The GPU training stage: one short dry-run training on the cache, tagged `gpu` (for filtering).

Two stages never share one GPU because each gpu worker serves one GPU with `--limit 1` (see
deployments/stack.sh), not because of a server-wide tag limit, which would make GPU hosts take turns.

The task writes what it learned to the run folder as a `StageResult` (`stage.json`): when this runs
on another worker (the `gpu` pool) the run folder is the contract between the two processes, and it
outlives both (on another host it travels through S3: flows/gpu_stage.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from atft_core.config import AtftConfig
from atft_core.dryrun import run_dryrun
from atft_core.stage_result import StageResult


@task(name="train-dryrun", tags=["gpu"], cache_policy=NO_CACHE, persist_result=False,
      description="Short training run on the cache; measures GPU use and validation RankIC.")
def train_dryrun_task(cache_path: str, config: dict[str, Any], run_dir: str) -> StageResult:
    logger = get_run_logger()
    cfg = AtftConfig.from_dict(config)
    t0 = time.perf_counter()
    result = run_dryrun(cache_path, cfg, Path(run_dir))
    stage = StageResult.from_dryrun(result, cfg, cache_path, Path(run_dir), time.perf_counter() - t0)
    stage.write(run_dir)
    logger.info("dry run finished in %.1fs: gate %s; %s", stage.seconds, "passed" if stage.passed else "FAILED",
                ", ".join(f"{k}={v:.4g}" for k, v in stage.metrics.items() if isinstance(v, (int, float))))
    return stage
