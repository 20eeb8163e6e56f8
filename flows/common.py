"""What every flow needs: its input panel, and where a GPU stage runs.

The flows import this module and never each other's internals: `pipeline` composes the two stage
flows (`gpu_stage`, `hpo_stage`), and neither stage imports `pipeline` or the other stage.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect.runtime import deployment as current_deployment

from atft_core.data.demo.config import DemoConfig
from atft_core.workroot import WorkRoot
from tasks.expected_errors import expected

GPU_DEPLOYMENT = "atft-gpu-stage/gpu"
GPU_POOL = "gpu"
_POLL_SECONDS = 3  # how often a waiting flow asks the API whether its gpu-pool runs finished
GpuDispatch = Literal["auto", "deployment", "local"]


@expected
class GpuStageFailed(RuntimeError):
    """A stage's flow run on the gpu pool did not complete in time, or its deployment is missing."""


@dataclass(frozen=True)
class Deadlines:
    """How long the pipeline waits for the gpu pool: to start a run (a worker picks it up), and in all."""

    start_s: float = 600.0  # how long a run may wait while its pool has no live worker
    total_s: float = 5 * 3600.0



def demo_data_path(root: WorkRoot) -> Path:
    """The default demo panel, named after its market (an older `demo.parquet` is another market)."""
    return root.demo / f"demo-{DemoConfig().market}.parquet"


def resolve_data_path(data_path: str | None, root: WorkRoot) -> str:
    """The given path (a relative one under the work root), or the demo panel under the work root,
    generated on first use.

    Written to a temporary name and renamed, so a run interrupted mid-generation (or two runs at
    once) never leaves a half-written panel that later runs would take for the real one.
    """
    if data_path:
        return str(root.resolve_data(data_path))
    demo = demo_data_path(root)
    if not demo.exists():
        from atft_core.data.demo.generate import generate_demo

        demo.parent.mkdir(parents=True, exist_ok=True)
        tmp = demo.with_name(f".{demo.name}.{os.getpid()}.tmp")
        logging.getLogger("atft").info("generating the demo market at %s (once; later runs reuse it)", demo)
        generate_demo(tmp, DemoConfig())
        Path(f"{tmp}.oracle.json").replace(f"{demo}.oracle.json")
        Path(f"{tmp}.oracle.parquet").replace(f"{demo}.oracle.parquet")
        tmp.replace(demo)
    return str(demo)


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
