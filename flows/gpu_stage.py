"""The GPU stage as its own flow, deployed on the `gpu` work pool.

Training runs where the GPU is: the pipeline (on the `cpu` pool) starts this flow's deployment
`atft-gpu-stage/gpu` and waits for it. Without a server or without that deployment (CLI, tests,
a notebook) it runs in-process as an ordinary subflow, so the same code path works anywhere.

Either way the result travels through the run folder (`stage.json`), not through Prefect's result
persistence: the folder is what both processes share and what a person reads later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import deployment as current_deployment

from tasks.train import read_stage, train_dryrun_task

GPU_DEPLOYMENT = "atft-gpu-stage/gpu"
GpuDispatch = Literal["auto", "deployment", "local"]
_POLL_SECONDS = 3  # how often the waiting pipeline asks the API whether the GPU run finished


class GpuStageFailed(RuntimeError):
    """The GPU stage's flow run (on the gpu pool) did not complete."""


@flow(name="atft-gpu-stage", description="Dry-run training on the GPU pool; writes stage.json to the run folder.")
def gpu_stage(cache_path: str, config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    return train_dryrun_task(cache_path, config, run_dir)


def gpu_deployment_for(dispatch: GpuDispatch, name: str = GPU_DEPLOYMENT) -> str | None:
    """The deployment `name` to run a GPU stage on, or None to run it in-process.

    `auto` uses the deployment only when this pipeline itself runs from a deployment (a worker is
    serving the pools) and the GPU deployment exists; a CLI run against a server stays in-process
    unless asked (`deployment`), since nothing guarantees a `gpu` worker is listening.
    """
    if dispatch == "local":
        return None
    if dispatch == "auto" and current_deployment.id is None:
        return None
    if deployment_exists(name):
        return name
    if dispatch == "deployment":
        raise GpuStageFailed(f"deployment {name} does not exist: run `make up` (or "
                             "`prefect deploy --all --prefect-file deployments/prefect.yaml`) first")
    get_run_logger().warning("deployment %s not found: running the GPU stage in-process", name)
    return None


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


def deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True
