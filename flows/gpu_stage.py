"""The GPU stage as its own flow, deployed on the `gpu` work pool.

Training runs where the GPU is: the pipeline (on the `cpu` pool) starts this flow's deployment
`atft-gpu-stage/gpu` and waits for it. Without a server or without that deployment (CLI, tests,
a notebook) it runs in-process as an ordinary subflow, so the same code path works anywhere.

Either way the result travels through the run folder (`stage.json`), not through Prefect's result
persistence: the folder is what both processes share and what a person reads later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run

from tasks.expected_errors import expected
from tasks.train import read_stage, train_dryrun_task

GPU_DEPLOYMENT = "atft-gpu-stage/gpu"
GPU_POOL = "gpu"
GpuDispatch = Literal["auto", "deployment", "local"]
_POLL_SECONDS = 3  # how often the waiting pipeline asks the API whether the GPU run finished
GPU_STAGE_TIMEOUT_S = 4 * 3600  # the stage's own flow timeout: a hung training ends Failed, never Running


@expected
class GpuStageFailed(RuntimeError):
    """The GPU stage's flow run (on the gpu pool) did not complete, or no gpu worker took it in time."""


@dataclass(frozen=True)
class Deadlines:
    """How long the pipeline waits for the gpu pool: to start a run (a worker picks it up), and in all."""

    start_s: float = 1800.0
    total_s: float = 5 * 3600.0


def _stage_run_name() -> str:
    return "gpu-" + Path(str(current_flow_run.parameters.get("run_dir") or "run")).name


@flow(name="atft-gpu-stage", flow_run_name=_stage_run_name, timeout_seconds=GPU_STAGE_TIMEOUT_S,
      description="Dry-run training on the GPU pool; writes stage.json to the run folder.")
def gpu_stage(cache_path: str, config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    check_device(str((config.get("train") or {}).get("device", "auto")))
    return train_dryrun_task(cache_path, config, run_dir)


def check_device(device: str) -> None:
    """On the worker that trains: `cuda` asked for and no GPU visible is a setup problem to name, not a crash."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        import os
        import platform

        raise GpuStageFailed(f"train.device is 'cuda' but this worker ({platform.node()}, CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}) sees no CUDA GPU: check the "
                             "driver (`nvidia-smi`) and the worker's CUDA_VISIBLE_DEVICES, or pass device=auto")


def gpu_deployment_for(dispatch: GpuDispatch, name: str = GPU_DEPLOYMENT) -> str | None:
    """The deployment `name` to run a GPU stage on, or None to run it in-process.

    `auto` uses the deployment when this pipeline itself runs from a deployment (a worker is serving
    the pools); a CLI run against a server stays in-process unless asked (`deployment`), since nothing
    guarantees a `gpu` worker is listening. From a deployment a missing GPU deployment is an error:
    falling back to the cpu worker would train without a GPU and pass a gate it should fail.
    """
    if dispatch == "local":
        return None
    if dispatch == "auto" and current_deployment.id is None:
        return None
    if deployment_exists(name):
        return name
    raise GpuStageFailed(f"deployment {name} does not exist, so there is nowhere to train on a GPU: run `make up` "
                         "(or `prefect deploy --all --prefect-file deployments/prefect.yaml`) first, or pass "
                         "gpu_stage=local to train on this worker on purpose")


def run_gpu_stage(deployment: str | None, cache_path: str, config: dict[str, Any], run_dir: Path,
                  deadlines: Deadlines = Deadlines()) -> dict[str, Any]:
    """Run the stage on `deployment` (and wait, within `deadlines`) or in-process; return what it wrote."""
    params = {"cache_path": str(cache_path), "config": config, "run_dir": str(run_dir)}
    if deployment is None:
        gpu_stage(**params)
    else:
        from prefect.deployments import run_deployment

        logger = get_run_logger()
        logger.info("starting %s; waiting at most %.0fs for a gpu worker to start it, %.0fs in all", deployment,
                    deadlines.start_s, deadlines.total_s)
        child = run_deployment(deployment, parameters=params, timeout=0, flow_run_name=f"gpu-{run_dir.name}")
        [state] = wait_for_runs([child], deadlines)
        if not state.is_completed():
            raise GpuStageFailed(f"GPU stage run '{child.name}' on pool {child.work_pool_name!r} ended "
                                 f"{state.name}: {state.message or 'see its logs'}")
        logger.info("GPU stage run '%s' completed on pool %r", child.name, child.work_pool_name)
    return read_stage(run_dir)


def wait_for_runs(runs: list[Any], deadlines: Deadlines, poll_s: float = _POLL_SECONDS) -> list[Any]:
    """Final states of flow runs on the gpu pool, in order. Past a deadline the unfinished ones are
    cancelled (a worker that picks one up later must not train for nobody) and GpuStageFailed says
    which pool to check."""
    from prefect.client.orchestration import get_client

    t0 = time.monotonic()
    states: dict[int, Any] = {}
    with get_client(sync_client=True) as client:
        while True:
            current = {i: client.read_flow_run(run.id) for i, run in enumerate(runs) if i not in states}
            states.update({i: fr.state for i, fr in current.items() if fr.state is not None and fr.state.is_final()})
            if len(states) == len(runs):
                return [states[i] for i in range(len(runs))]
            waited = time.monotonic() - t0
            unstarted = [fr for fr in current.values() if fr.state is None or fr.state.is_scheduled()]
            if unstarted and waited > deadlines.start_s:
                _cancel(client, list(current.values()))
                pool = unstarted[0].work_pool_name or GPU_POOL
                raise GpuStageFailed(
                    f"no worker on pool {pool!r} started {', '.join(repr(fr.name) for fr in unstarted)} within "
                    f"{deadlines.start_s:.0f}s; cancelled. Check that a worker polls it (`prefect worker ls` / the "
                    f"UI's Work Pools page; start one with `prefect worker start --pool {pool} --limit 1`) and "
                    f"that the pool and its queue are not paused (`prefect work-pool inspect {pool}`)")
            if waited > deadlines.total_s:
                _cancel(client, list(current.values()))
                pool = next(iter(current.values())).work_pool_name or GPU_POOL
                raise GpuStageFailed(
                    f"{', '.join(repr(fr.name) for fr in current.values())} on pool {pool!r} did not finish within "
                    f"{deadlines.total_s:.0f}s; cancelled. Check the run's logs and the gpu worker's host "
                    "(is the GPU busy or the worker gone?)")
            time.sleep(poll_s)


def _cancel(client: Any, flow_runs: list[Any]) -> None:
    """Cancel runs that are not final: a scheduled one directly, a running one through its worker."""
    from prefect.states import Cancelled, Cancelling

    for fr in flow_runs:
        if fr.state is not None and fr.state.is_final():
            continue
        running = fr.state is not None and (fr.state.is_running() or fr.state.is_pending())
        client.set_flow_run_state(fr.id, Cancelling() if running else Cancelled(message="deadline passed"),
                                  force=True)


def deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True
