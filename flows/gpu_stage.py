"""The GPU stage as its own flow, deployed on the `gpu` work pool.

Training runs where the GPU is: the pipeline (on the `cpu` pool) starts this flow's deployment
`atft-gpu-stage/gpu` and waits for it. Without a server or without that deployment (CLI, tests,
a notebook) it runs in-process as an ordinary subflow, so the same code path works anywhere.

Either way the result travels through the run folder (`stage.json`), not through Prefect's result
persistence: the folder is what both processes share and what a person reads later. With
ATFT_ARTIFACT_URI set, a run on the gpu pool shares no disk with the pipeline: the cache and the
run folder travel through the bucket (flows.remote_stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run

from atft_core.s3.client import S3Options
from atft_core.stage_result import StageResult
from flows.remote_stage import Deadlines, GpuStageFailed, PoolRun, check_gpu_host, on_worker, run_on_pool
from tasks.expected_errors import install_log_filter
from tasks.train import train_dryrun_task

GPU_STAGE_TIMEOUT_S = 4 * 3600  # the stage's own flow timeout: a hung training ends Failed, never Running


def _stage_run_name() -> str:
    return "gpu-" + Path(str(current_flow_run.parameters.get("run_dir") or "run")).name


@flow(name="atft-gpu-stage", flow_run_name=_stage_run_name, timeout_seconds=GPU_STAGE_TIMEOUT_S,
      description="Dry-run training on the GPU pool; writes stage.json to the run folder.")
def gpu_stage(cache_path: str, config: dict[str, Any], run_dir: str, exchange_uri: str | None = None) -> StageResult:
    """exchange_uri: the pipeline's s3://bucket/prefix; then `cache_path` and `run_dir` are the pipeline
    host's paths, only their names are used here.

    The device is checked first: a run meant for a GPU (the gate requires one: a deployment run unless
    it says require_gpu=false) fails at once, naming this host, where there is none."""
    install_log_filter()
    check_gpu_host(str((config.get("train") or {}).get("device", "auto")),
                   require_gpu=bool((config.get("gate") or {}).get("require_gpu")))
    if not exchange_uri:
        return train_dryrun_task(cache_path, config, run_dir)
    return on_worker(exchange_uri, cache_path, run_dir, lambda cache, run: train_dryrun_task(cache, config, run))


def run_gpu_stage(deployment: str | None, cache_path: str, config: dict[str, Any], run_dir: Path,
                  deadlines: Deadlines = Deadlines(), exchange: S3Options | None = None) -> StageResult:
    """Run the stage on `deployment` (and wait, within `deadlines`) or in-process; return what it wrote.

    exchange: on the gpu pool, move the cache and the results through this bucket (no shared disk).
    """
    if deployment is None:
        gpu_stage(cache_path=str(cache_path), config=config, run_dir=str(run_dir))
        return StageResult.read(run_dir)
    params: dict[str, Any] = {"cache_path": str(cache_path), "config": config, "run_dir": str(run_dir)}
    [(child, state)] = run_on_pool(deployment, [PoolRun(f"gpu-{run_dir.name}", params)], cache_path=str(cache_path),
                                   run_dir=run_dir, deadlines=deadlines, exchange=exchange)
    if not state.is_completed():
        raise GpuStageFailed(f"GPU stage run '{child.name}' on pool {child.work_pool_name!r} ended "
                             f"{state.name}: {state.message or 'see its logs'}")
    get_run_logger().info("GPU stage run '%s' completed on pool %r", child.name, child.work_pool_name)
    return StageResult.read(run_dir)
