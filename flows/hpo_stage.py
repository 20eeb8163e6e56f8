"""The HPO stage: queue N trials in one Optuna study, let K workers drain it, publish the result.

```
prepare (queue N trials) ──► K workers ──────────────────────────► report + artifacts
                              gpu pool: K runs of atft-hpo-worker/gpu (run_deployment)
                              no server / no deployment: K tasks in this flow run
```

Pipeline `atft` calls `run_hpo_stage` in mode "hpo" after a passed gate; flow `atft-hpo` (the
`atft hpo` command) builds the cache and calls it directly. Every worker joins the same study in the
same storage, so a worker that starts late (another GPU host) simply takes the next queued trial,
and the study continues across runs: the pipeline keeps its default SQLite file in the output dir,
not in the run's own folder. Use PostgreSQL when the workers are on more than one host.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from atft_core.config import DryRunConfig
from atft_core.data.source import S3Options
from atft_core.hpo.study import HpoConfig, default_storage_url, display_url, worker_file, worker_seed
from flows.gpu_stage import Deadlines, GpuDispatch, gpu_deployment_for, wait_for_runs
from tasks.hpo import finish_hpo_task, hpo_worker_task, prepare_hpo_task, publish_hpo_task

HPO_WORKER_DEPLOYMENT = "atft-hpo-worker/gpu"


class HpoStageFailed(RuntimeError):
    """Some HPO workers failed; the study (and every trial they finished) is intact in storage."""


@flow(name="atft-hpo-worker", timeout_seconds=Deadlines.total_s,
      description="One HPO worker on the gpu pool: drains the study's queue of trials.")
def hpo_worker_flow(cache_path: str, config: dict[str, Any], hpo: dict[str, Any], output_dir: str,
                    worker_index: int = 0, sampler_seed: int = 0) -> dict[str, Any]:
    # This flow run is its own process (the gpu worker started it): no subprocess needed.
    return hpo_worker_task(cache_path, config, hpo, output_dir, worker_index, sampler_seed)


def run_hpo_stage(*, cache: dict[str, Any], run_dir: Path, config: DryRunConfig, n_trials: int | None,
                  study_name: str | None, storage: str | None, workers: int = 1, study_dir: Path | None = None,
                  pruner: str = "median", seed: int = 0, timeout_s: float | None = None,
                  search_space: str | None = None, dispatch: GpuDispatch = "auto") -> dict[str, Any]:
    """Queue `n_trials` trials, run them on `workers` workers, publish; the summary (also `run_dir/hpo.json`).

    `study_dir` holds the default SQLite storage (`optuna.db`): the pipeline passes its output dir so
    that each nightly run continues the same study; None means `run_dir`.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    hpo = HpoConfig(n_trials=5 if n_trials is None else n_trials, study_name=study_name or "atft",
                    storage=storage or default_storage_url(study_dir or run_dir), pruner=pruner, seed=seed,
                    max_epochs=config.train.max_epochs, timeout_s=timeout_s, parallel=max(1, workers),
                    search_space=search_space)
    batch = prepare_hpo_task(hpo.to_dict())
    k = max(1, min(hpo.parallel, hpo.n_trials))
    deployment = gpu_deployment_for(dispatch, HPO_WORKER_DEPLOYMENT)
    if deployment is None and k > 1 and _trains_on_gpu(config.train.device):
        # One training per GPU: parallel trials on a GPU machine need one gpu worker per GPU.
        logger.warning("%d in-process HPO workers would share this GPU: running 1. For parallel trials start one "
                       "gpu worker per GPU (`make up`) and run from a deployment", k)
        k = 1
    args = {"cache_path": str(cache["path"]), "config": config.to_dict(), "hpo": hpo.to_dict(),
            "output_dir": str(run_dir)}
    seeds = [worker_seed(seed, batch["first_number"], i) for i in range(k)]
    if deployment is not None:
        reports, errors = _run_on_pool(deployment, args, seeds, run_dir, batch_key(batch))
    else:
        reports, errors = _run_in_process(args, seeds)
    summary = finish_hpo_task(hpo.to_dict(), batch, str(run_dir), reports, time.perf_counter() - t0, errors)
    publish_hpo_task(summary)
    logger.info("HPO: best RankIC %s; this run %s; study %s", summary["best_value"], summary["counts"],
                summary["study_counts"])
    if errors:
        raise HpoStageFailed(f"{len(errors)} of {k} HPO worker(s) failed: {'; '.join(errors)}. "
                             f"Finished trials are kept in {display_url(hpo.storage or '')}")
    return {key: value for key, value in summary.items() if key != "trials"}  # the table is an artifact


def _trains_on_gpu(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return device == "cuda" or torch.cuda.is_available()


def _run_in_process(args: dict[str, Any], seeds: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """K tasks at once; with K > 1 each runs its worker as a process (own GIL, own memory, own crash)."""
    futures = [hpo_worker_task.submit(**args, worker_index=i, sampler_seed=s, subprocess=len(seeds) > 1)
               for i, s in enumerate(seeds)]
    reports, errors = [], []
    for i, fut in enumerate(futures):
        fut.wait()
        state = fut.state
        if state.is_completed():
            reports.append(fut.result())
        else:
            errors.append(f"worker {i}: {state.name}: {state.message or ''}".strip())
    return reports, errors


def batch_key(batch: dict[str, Any]) -> str:
    """Names one batch of queued trials (storage, study, the batch's own tag). A retried nightly queues a
    new batch, so its worker runs get new idempotency keys and really run (the parent's run id would
    hand back the old, finished worker runs and leave the new trials queued)."""
    where = hashlib.blake2b(str(batch["storage_url"]).encode(), digest_size=6).hexdigest()
    return f"hpo-{where}-{batch['study_name']}-{batch['batch']}"


def _run_on_pool(deployment: str, args: dict[str, Any], seeds: list[int], run_dir: Path,
                 key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """K runs of the worker deployment, started together, awaited together (within the gpu pool's
    deadlines); reports via the run folder."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    if "@" in str(args["hpo"].get("storage")) and "${" not in str(args["hpo"].get("storage")):
        logger.warning("the storage URL carries a password and becomes a parameter of the worker runs; use a "
                       "${VAR} placeholder filled from the gpu workers' environment instead")
    runs = [run_deployment(deployment, parameters={**args, "worker_index": i, "sampler_seed": s}, timeout=0,
                           flow_run_name=f"hpo-{run_dir.name}-w{i}", idempotency_key=f"{key}-w{i}")
            for i, s in enumerate(seeds)]
    logger.info("started %d HPO worker run(s) on %s; waiting for the gpu pool", len(runs), deployment)
    states = dict(enumerate(wait_for_runs(runs, Deadlines())))
    reports, errors = [], []
    for i, run in enumerate(runs):
        path = worker_file(run_dir, i, "json")
        if states[i].is_completed() and path.exists():
            reports.append(json.loads(path.read_text()))
        else:
            errors.append(f"worker run '{run.name}' ended {states[i].name}: {states[i].message or 'see its logs'}")
    return reports, errors


@flow(name="atft-hpo", description="Build the cache, then a short HPO study (the `atft hpo` command).")
def atft_hpo(data_path: str | None = None, output_dir: str = "runs/hpo", n_trials: int = 5, max_epochs: int = 2,
             study_name: str = "atft", storage: str | None = None, parallel: int = 1, cache_dir: str | None = None,
             config_path: str | None = None, search_space: str | None = None, pruner: str = "median", seed: int = 0,
             timeout_s: float | None = None, device: str | None = None,
             gpu_stage: GpuDispatch = "auto") -> dict[str, Any]:
    """Writes `output_dir/hpo.json`, `trials.csv` and plots; the default storage is `output_dir/optuna.db`."""
    from flows.pipeline import DEFAULT_DATA_ROOT, build_config, resolve_data_path
    from tasks.cache import cached_build

    cfg = build_config(config_path, max_epochs=max_epochs, device=device)
    data = resolve_data_path(data_path)
    cache = cached_build(data, cache_dir or str(Path(DEFAULT_DATA_ROOT) / "cache"), cfg.cache, S3Options.from_env(),
                         require=cfg.data)
    return run_hpo_stage(cache=cache, run_dir=Path(output_dir).resolve(), config=cfg, n_trials=n_trials,
                         study_name=study_name, storage=storage, workers=parallel, pruner=pruner, seed=seed,
                         timeout_s=timeout_s, search_space=search_space, dispatch=gpu_stage)


def run_hpo(**params: Any) -> dict[str, Any]:
    """Run flow `atft-hpo` (in-process, or recorded on the server PREFECT_API_URL names); its summary.

    A failed run re-raises the original exception so the CLI can map it to an exit code.
    """
    state = atft_hpo(**params, return_state=True)
    if state.is_completed():
        return state.result()
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        raise exc
    raise RuntimeError(f"flow run atft-hpo ended {state.name}: {state.message or ''}")
