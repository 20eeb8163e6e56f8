"""The GPU training stage: one short dry-run training on the cache, tagged `gpu` (for filtering).

Two stages never share one GPU because each gpu worker serves one GPU with `--limit 1` (see
deployments/stack.sh), not because of a server-wide tag limit, which would make GPU hosts take turns.

The task writes everything it learned to `stage.json` in the run folder. The pipeline reads that
file, never Prefect's result persistence: when this runs on another worker (the `gpu` pool) the
run folder is the contract between the two processes, and it outlives both (on another host it
travels through S3: flows/gpu_stage.py).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from atft_core.config import AtftConfig
from atft_core.dryrun import json_safe, run_dryrun
from atft_core.provenance import code_version
from atft_core.rundir import read_json, write_json

STAGE_FILE = "stage.json"


@task(name="train-dryrun", tags=["gpu"], cache_policy=NO_CACHE, persist_result=False,
      description="Short training run on the cache; measures GPU use and validation RankIC.")
def train_dryrun_task(cache_path: str, config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    logger = get_run_logger()
    cfg = AtftConfig.from_dict(config)
    run_dir_p = Path(run_dir)
    t0 = time.perf_counter()
    result = run_dryrun(cache_path, cfg, run_dir_p)
    stage = {
        "passed": bool(result.gate.passed),
        "gate": result.gate.to_dict(),
        # model vs ridge vs oracle, then the signal report: a RankIC means little without them
        "gate_markdown": "\n\n".join(part for part in (result.gate.to_markdown(),
                                                         result.baselines.get("markdown", ""),
                                                         result.report_markdown) if part),
        "metrics": result.metrics,
        "history": result.history,
        "gpu": result.gpu,
        "files": {name: _relative(Path(p), run_dir_p) for name, p in result.files.items()},
        "config": cfg.to_dict(),
        "cache_path": str(cache_path),
        "host": platform.node(),
        "code": code_version(),  # the commit of the checkout (or the worker's clone) that trained
        "seconds": round(time.perf_counter() - t0, 3),
    }
    stage = json_safe(stage)  # NaN -> null, numpy scalars -> numbers: the file is plain JSON
    write_json(run_dir_p / STAGE_FILE, stage)
    logger.info("dry run finished in %.1fs: gate %s; %s", stage["seconds"],
                "passed" if stage["passed"] else "FAILED",
                ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if isinstance(v, (int, float))))
    return stage


def read_stage(run_dir: str | Path) -> dict[str, Any]:
    """The stage result from the run folder (written by `train_dryrun_task`, wherever it ran)."""
    path = Path(run_dir) / STAGE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the GPU stage did not finish writing its results "
                                "(see the gpu run's logs; a gpu worker on another host needs ATFT_ARTIFACT_URI set for "
                                "the pipeline, so that results travel through S3)")
    return read_json(path)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
