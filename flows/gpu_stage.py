"""The GPU stage as its own flow, deployed on the `gpu` work pool.

Training runs where the GPU is: the pipeline (on the `cpu` pool) starts this flow's deployment
`atft-gpu-stage/gpu` and waits for it. Without a server or without that deployment (CLI, tests,
a notebook) it runs in-process as an ordinary subflow, so the same code path works anywhere.

Either way the result travels through the run folder (`stage.json`), not through Prefect's result
persistence: the folder is what both processes share and what a person reads later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import GpuStageFailed
from tasks.train import read_stage, train_dryrun_task

_POLL_SECONDS = 3  # how often the waiting pipeline asks the API whether the GPU run finished


@flow(name="atft-gpu-stage", description="Dry-run training on the GPU pool; writes stage.json to the run folder.")
def gpu_stage(cache_path: str, config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    return train_dryrun_task(cache_path, config, run_dir)


def run_gpu_stage(deployment: str | None, cache_path: str, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run the stage on `deployment` (and wait) or in-process; return what it wrote to the run folder."""
    params = {"cache_path": str(cache_path), "config": config, "run_dir": str(run_dir)}
    if deployment is None:
        gpu_stage(**params)
    else:
        from prefect.deployments import run_deployment

        logger = get_run_logger()
        logger.info("starting %s and waiting for a gpu worker", deployment)
        # timeout=None: wait as long as the GPU queue takes; the gpu concurrency limit may hold it.
        child = run_deployment(deployment, parameters=params, timeout=None, poll_interval=_POLL_SECONDS,
                               flow_run_name=f"gpu-{run_dir.name}")
        state = child.state
        if state is None or not state.is_completed():
            raise GpuStageFailed(f"GPU stage run '{child.name}' on pool {child.work_pool_name!r} ended "
                                 f"{state.name if state else 'without a state'}: "
                                 f"{(state.message if state else '') or 'see its logs'}")
        logger.info("GPU stage run '%s' completed on pool %r", child.name, child.work_pool_name)
    return read_stage(run_dir)

