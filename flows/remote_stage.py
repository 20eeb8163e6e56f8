"""A stage on the gpu pool, both sides of it: where it runs, how the pipeline waits, how files travel.

Pipeline side (`run_on_pool`): share the cache through the bucket when there is one, start the
deployment's runs, wait for them within the pool's `Deadlines`, and fetch their results back into
the run folder, failed or not. Worker side (`on_worker`): fetch the cache into this host's work
folder, run, and share what was written, also when it failed. A stage that runs in-process (no
server, no deployment) uses neither: it reads and writes the pipeline's own folders.

With ATFT_ARTIFACT_URI set a gpu run shares no disk with the pipeline: the bucket is passed as the
flow parameter `exchange_uri`, and each side reaches it with its own environment (layout: atft_core.s3).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from prefect import get_run_logger
from prefect.runtime import deployment as current_deployment

from atft_core.s3.client import S3Options
from atft_core.workroot import WorkRoot
from flows.params import GPU_START_TIMEOUT_S, GPU_TIMEOUT_S, GpuDispatch
from tasks.exchange import fetch_cache_task, fetch_results_task, share_cache_task, share_results_task
from tasks.expected_errors import expected

T = TypeVar("T")

GPU_DEPLOYMENT = "atft-gpu-stage/gpu"
GPU_POOL = "gpu"
_POLL_SECONDS = 3  # how often a waiting flow asks the API whether its gpu-pool runs finished
WORK_DIR_ENV = "ATFT_WORK_DIR"  # a gpu worker's folder for fetched caches and its copies of run folders


@expected
class GpuStageFailed(RuntimeError):
    """A stage's flow run on the gpu pool did not complete in time, or its deployment is missing."""


@dataclass(frozen=True)
class Deadlines:
    """How long the pipeline waits for the gpu pool: to start a run (a worker picks it up), and in all."""

    start_s: float = GPU_START_TIMEOUT_S  # how long a run may wait while its pool has no live worker
    total_s: float = GPU_TIMEOUT_S


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


def deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def wait_for_runs(runs: list[Any], deadlines: Deadlines, poll_s: float = _POLL_SECONDS) -> list[Any]:
    """Final states of flow runs on the gpu pool, in order; a run given up on comes back Cancelled with why.

    The deadlines tell a queued run from a lost one:
    - past `start_s`, runs not yet started are cancelled only when their pool has no live worker
      (no worker heartbeat, or the pool paused): a run queued behind a busy GPU, with its worker
      alive, waits on; running siblings are never cancelled for it and finish their work;
    - past `total_s`, every unfinished run is cancelled (a running one through its worker).
    When this wait ends any other way (the parent flow times out, is cancelled or fails), the runs
    still going are cancelled too: a gpu run must not train for a parent that is gone.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    t0 = time.monotonic()
    states: dict[int, Any] = {}
    current: dict[int, Any] = {}
    with get_client(sync_client=True) as client:
        try:
            while True:
                current = {i: client.read_flow_run(run.id) for i, run in enumerate(runs) if i not in states}
                states.update({i: fr.state for i, fr in current.items()
                               if fr.state is not None and fr.state.is_final()})
                if len(states) == len(runs):
                    return [states[i] for i in range(len(runs))]
                waited = time.monotonic() - t0
                unstarted = {i: fr for i, fr in current.items() if i not in states
                             and (fr.state is None or fr.state.is_scheduled())}
                if unstarted and waited > deadlines.start_s:
                    pool = next(iter(unstarted.values())).work_pool_name or GPU_POOL
                    if (why := pool_not_served(client, pool)) is not None:
                        reason = (f"not started within {deadlines.start_s:.0f}s and {why}: start one with `prefect "
                                  f"worker start --pool {pool} --limit 1` on a GPU host (`make up` there), or "
                                  f"resume the pool (`prefect work-pool inspect {pool}`)")
                        _cancel(client, list(unstarted.values()), reason)
                        states.update({i: Cancelled(message=reason) for i in unstarted})
                        continue
                if waited > deadlines.total_s:
                    late = [fr for i, fr in current.items() if i not in states]
                    pool = late[0].work_pool_name or GPU_POOL
                    reason = (f"not finished within {deadlines.total_s:.0f}s on pool {pool!r}; cancelled. Check the "
                              "run's logs and the gpu worker's host (is the GPU busy or the worker gone?)")
                    _cancel(client, late, reason)
                    states.update({i: Cancelled(message=reason) for i in current if i not in states})
                    continue
                time.sleep(poll_s)
        except BaseException:
            _cancel(client, [fr for i, fr in current.items() if i not in states], "the parent run ended")
            raise


def pool_not_served(client: Any, pool: str) -> str | None:
    """Why nobody will pick up a run on `pool` (paused, or no worker with a recent heartbeat), or None."""
    from prefect.client.schemas.objects import WorkerStatus, WorkPoolStatus

    try:
        wp = client.read_work_pool(pool)
    except Exception:  # noqa: BLE001 - a pool that cannot be read serves nobody; the message says which
        return f"pool {pool!r} cannot be read"
    if wp.status == WorkPoolStatus.PAUSED:
        return f"pool {pool!r} is paused"
    workers = client.read_workers_for_work_pool(pool)
    if not any(w.status == WorkerStatus.ONLINE for w in workers):
        return f"no worker on pool {pool!r} is alive ({len(workers)} known, none with a recent heartbeat)"
    return None


def _cancel(client: Any, flow_runs: list[Any], reason: str) -> None:
    """Cancel runs that are not final: a scheduled one directly, a running one through its worker."""
    from prefect.states import Cancelled, Cancelling

    for fr in flow_runs:
        try:
            fr = client.read_flow_run(fr.id)  # its state now, not when it was last polled
            if fr.state is not None and fr.state.is_final():
                continue
            running = fr.state is not None and (fr.state.is_running() or fr.state.is_pending())
            client.set_flow_run_state(fr.id, Cancelling(message=reason) if running else Cancelled(message=reason),
                                      force=True)
        except Exception as exc:  # noqa: BLE001 - best effort: the other runs still get cancelled
            logging.getLogger("atft").warning("could not cancel flow run %s: %s", fr.id, exc)

class PoolRun(NamedTuple):
    """One flow run to start on the gpu pool. idempotency_key None: a new run every time."""

    name: str
    parameters: dict[str, Any]
    idempotency_key: str | None = None


def run_on_pool(deployment: str, runs: list[PoolRun], *, cache_path: str, run_dir: Path, deadlines: Deadlines,
                exchange: S3Options | None = None, results: str = "") -> list[tuple[Any, Any]]:
    """Start `runs` of `deployment` together and wait for them within `deadlines`: (flow run, final state)
    of each, in order.

    exchange: the bucket the cache travels through first (each run gets it as `exchange_uri`) and
    what the runs wrote under `run_dir/results` comes back through after, failed or not. A fetch that
    fails is raised when some run completed (its results are needed), else only logged: the runs'
    own failure is what matters then.
    """
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    shared: dict[str, Any] = {}
    if exchange is not None:
        share_cache_task(str(cache_path), exchange)
        shared = {"exchange_uri": exchange.uri}
    logger.info("starting %d run(s) of %s; waiting at most %.0fs for a gpu worker to start each, %.0fs in all",
                len(runs), deployment, deadlines.start_s, deadlines.total_s)
    children = [run_deployment(deployment, parameters={**run.parameters, **shared}, timeout=0,
                               flow_run_name=run.name, idempotency_key=run.idempotency_key) for run in runs]
    states = wait_for_runs(children, deadlines)
    if exchange is not None:
        try:
            fetch_results_task(exchange, str(run_dir), results)
        except Exception as exc:
            if any(state.is_completed() for state in states):
                raise
            logger.error("could not fetch the failed stage's files: %s", exc)
    return list(zip(children, states))


def check_gpu_host(device: str, require_gpu: bool) -> None:
    """First thing a gpu-pool flow does: fail, naming the host, when this worker cannot train on a GPU.

    A gpu worker started on a host without one (or with the wrong CUDA_VISIBLE_DEVICES) would otherwise
    take runs meant for the GPU hosts and train them on the CPU. Only a run that says require_gpu=false
    (a developer's CPU check) or device=cpu trains here anyway.
    """
    import platform

    if device == "cpu" or (device == "auto" and not require_gpu):
        return
    import torch

    if not torch.cuda.is_available():
        raise GpuStageFailed(
            f"this gpu-pool run landed on {platform.node()}, which has no usable CUDA GPU (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): stop the gpu worker on that host, or check its "
            "driver (`nvidia-smi`); to train on a CPU on purpose pass require_gpu=false (or device=cpu)")


def worker_work_dir() -> Path:
    """Where this gpu worker keeps fetched caches and run folders: ATFT_WORK_DIR, else the work root
    (ATFT_HOME, atft_core.workroot).

    A stable folder, not the flow run's temporary clone, so a cache is downloaded once per host.
    """
    if os.environ.get(WORK_DIR_ENV):
        return Path(os.environ[WORK_DIR_ENV]).expanduser().resolve()
    return WorkRoot.from_env().home


def exchange_target(uri: str) -> S3Options:
    """The pipeline's bucket (a flow parameter), reached with this worker's own endpoint and credentials."""
    target = S3Options.artifacts_from_env(uri=uri)
    if target is None:
        raise ValueError("exchange_uri is empty: pass s3://bucket/prefix or leave it out")
    return target


def on_worker(exchange_uri: str, cache_path: str, run_dir: str, work: Callable[[str, str], T], *,
              results: str = "") -> T:
    """`work(cache, run folder)` on this gpu host, with the pipeline's cache and run folder through S3.

    `cache_path` and `run_dir` are the pipeline host's paths: only their names are used. The cache is
    fetched into this host's work folder (once per cache), `work` writes into this host's copy of the
    run folder, and its `results` subfolder ("" = all of it) is shared back, failed or not.
    """
    target = exchange_target(exchange_uri)
    home = worker_work_dir()  # the environment is read here, at the flow boundary
    local_run = home / "runs" / Path(run_dir).name
    local_run.mkdir(parents=True, exist_ok=True)
    cache = fetch_cache_task(Path(cache_path).name, target, str(home))
    try:
        return work(cache, str(local_run))
    finally:  # a failed run's logs and partial files reach the pipeline's report too
        share_results_task(str(local_run / results), target, local_run.name, results)
