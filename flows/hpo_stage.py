"""The HPO stage: queue N trials in one Optuna study, let K workers drain it, publish the result.

```
prepare (queue N trials) ──► K workers ──────────────────────────► report + artifacts
                              gpu pool: K runs of atft-hpo-worker/gpu (run_deployment; PostgreSQL)
                              otherwise: K processes on this host (one task; journal file for K > 1)
```

Pipeline `atft` calls `run_hpo_stage` in mode "hpo" after a passed gate; flow `atft-hpo` (the
`atft hpo` command) builds the cache and calls it directly. Every worker joins the same study in the
same storage, so a worker that starts late (another GPU host) simply takes the next queued trial,
and the study continues across runs: the pipeline keeps its default storage file in the output dir,
not in the run's own folder. More than one worker on the gpu pool needs PostgreSQL (refused otherwise:
pool workers may sit on other hosts); K local processes share a journal file. With ATFT_ARTIFACT_URI
set, worker runs on the pool fetch the cache and return their reports through S3, like the GPU stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from atft_core.config import AtftConfig
from atft_core.hpo.config import HpoConfig
from atft_core.hpo.storage import check_study_reachable, display_url, storage_for_workers
from atft_core.hpo.worker import batch_key, trains_on_gpu, worker_file, worker_params, worker_seed
from atft_core.s3.client import S3Options
from atft_core.workroot import WorkRoot
from flows.common import resolve_data_path
from flows.params import DEFAULT_TRIALS, GpuDispatch
from flows.remote_stage import (
    Deadlines,
    PoolRun,
    check_gpu_host,
    gpu_deployment_for,
    on_worker,
    run_on_pool,
)
from tasks.cache import CacheRef, cached_build
from tasks.expected_errors import expected, install_log_filter
from tasks.hpo import finish_hpo_task, hpo_local_workers_task, hpo_worker_task, prepare_hpo_task, publish_hpo_task

HPO_WORKER_DEPLOYMENT = "atft-hpo-worker/gpu"


@expected
class HpoStageFailed(RuntimeError):
    """Some HPO workers failed; the study (and every trial they finished) is intact in storage."""


@flow(name="atft-hpo-worker", timeout_seconds=Deadlines.total_s,
      description="One HPO worker on the gpu pool: runs its share of the queued trials.")
def hpo_worker_flow(cache_path: str, config: dict[str, Any], hpo: dict[str, Any], output_dir: str,
                    worker_index: int = 0, sampler_seed: int = 0, n_trials: int | None = None,
                    exchange_uri: str | None = None, require_gpu: bool = True) -> dict[str, Any]:
    """`n_trials`: this worker's share of the queued trials; None (a run started by hand) takes every
    trial queued when it starts. `exchange_uri`: the pipeline's bucket; then `cache_path` and
    `output_dir` are the pipeline host's paths and only their names are used here.
    `require_gpu`: fail at once on a host without a CUDA GPU (the pipeline passes its gate's setting;
    only an explicit require_gpu=false lets a gpu-pool run train on a CPU)."""
    install_log_filter()
    check_gpu_host(str((config.get("train") or {}).get("device", "auto")), require_gpu)
    if not exchange_uri:
        return hpo_worker_task(cache_path, config, hpo, output_dir, worker_index, sampler_seed, n_trials)
    check_study_reachable(str(hpo.get("storage") or ""))
    return on_worker(exchange_uri, cache_path, output_dir, results="workers",
                     work=lambda cache, run: hpo_worker_task(cache, config, hpo, run, worker_index, sampler_seed,
                                                             n_trials))


def run_hpo_stage(*, cache: CacheRef, run_dir: Path, config: AtftConfig, n_trials: int | None,
                  study_name: str | None, storage: str | None, workers: int = 1, study_dir: Path | None = None,
                  pruner: str = "median", seed: int = 0, timeout_s: float | None = None,
                  search_space: str | None = None, dispatch: GpuDispatch = "auto",
                  deadlines: Deadlines = Deadlines(), exchange: S3Options | None = None) -> dict[str, Any]:
    """Queue `n_trials` trials, run them on `workers` workers, publish; the summary (also `run_dir/hpo.json`).

    `deadlines`: how long worker runs on the gpu pool may wait to start and run; past them they are
    cancelled and the stage fails naming the pool.

    `exchange`: on the gpu pool, the bucket the cache and the worker reports travel through.

    `study_dir` holds the default storage (`optuna.db`; `optuna.log` for K > 1 local processes): the
    pipeline passes its output dir so that each nightly run continues the same study; None means `run_dir`.
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    n_trials = DEFAULT_TRIALS if n_trials is None else n_trials
    deployment = None if dispatch == "deployment" else gpu_deployment_for(dispatch, HPO_WORKER_DEPLOYMENT)
    # Refused before anything is queued (and, when asked for the pool, before looking its deployment up).
    url, k = storage_for_workers(storage, study_dir or run_dir, workers, n_trials,
                                 on_pool=dispatch == "deployment" or deployment is not None)
    if dispatch == "deployment":
        deployment = gpu_deployment_for(dispatch, HPO_WORKER_DEPLOYMENT)  # raises when it does not exist
    run_dir.mkdir(parents=True, exist_ok=True)
    hpo = HpoConfig(n_trials=n_trials, study_name=study_name or "atft", storage=url,
                    pruner=pruner, seed=seed, max_epochs=config.train.max_epochs, timeout_s=timeout_s, parallel=k,
                    search_space=search_space)
    batch = prepare_hpo_task(hpo.to_dict())
    if deployment is None and k > 1 and trains_on_gpu(config.train.device):
        # One training per GPU: parallel trials on a GPU machine need one gpu worker per GPU.
        logger.warning("%d in-process HPO workers would share this GPU: running 1. For parallel trials start one "
                       "gpu worker per GPU (`make up`) and run from a deployment", k)
        k = 1
    args = {"cache_path": cache.path, "config": config.to_dict(), "hpo": hpo.to_dict(),
            "output_dir": str(run_dir)}
    if deployment is not None:
        tag = batch_key(batch)
        runs = [PoolRun(f"hpo-{run_dir.name}-w{i}", {**args, **params, "require_gpu": bool(config.gate.require_gpu)},
                        f"{tag}-w{i}")
                for i, params in enumerate(worker_params(seed, batch["first_number"], batch["queued"], k))]
        done = run_on_pool(deployment, runs, cache_path=args["cache_path"], run_dir=run_dir, deadlines=deadlines,
                           exchange=exchange, results="workers")
        reports, errors = _worker_reports(run_dir, done)
    elif k == 1:
        reports, errors = [hpo_worker_task(**args, worker_index=0, n_trials=batch["queued"],
                                           sampler_seed=worker_seed(seed, batch["first_number"], 0))], []
    else:
        local = hpo_local_workers_task(**args, first_number=batch["first_number"], queued=batch["queued"], workers=k)
        reports, errors = local["reports"], local["errors"]
    summary = finish_hpo_task(hpo.to_dict(), batch, str(run_dir), reports, time.perf_counter() - t0, errors)
    publish_hpo_task(summary)
    logger.info("HPO: best RankIC %s; this run %s; study %s", summary["best_value"], summary["counts"],
                summary["study_counts"])
    if errors:
        raise HpoStageFailed(f"{len(errors)} of {k} HPO worker(s) failed: {'; '.join(errors)}. "
                             f"Finished trials are kept in {display_url(url)}")
    return {key: value for key, value in summary.items() if key != "trials"}  # the table is an artifact


def _worker_reports(run_dir: Path, done: list[tuple[Any, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The reports of the pool's worker runs that completed (from the run folder), and why the others did not."""
    reports, errors = [], []
    for i, (run, state) in enumerate(done):
        path = worker_file(run_dir, i, "json")
        if state.is_completed() and path.exists():
            reports.append(json.loads(path.read_text()))
        else:
            errors.append(f"worker run '{run.name}' ended {state.name}: {state.message or 'see its logs'}")
    return reports, errors


@flow(name="atft-hpo", description="Build the cache, then a short HPO study (the `atft hpo` command).")
def atft_hpo(data_path: str | None = None, output_dir: str | None = None, n_trials: int = 5, max_epochs: int = 2,
             study_name: str = "atft", storage: str | None = None, parallel: int = 1, cache_dir: str | None = None,
             config_path: str | None = None, search_space: str | None = None, pruner: str = "median", seed: int = 0,
             timeout_s: float | None = None, device: str | None = None,
             gpu_stage: GpuDispatch = "auto") -> dict[str, Any]:
    """Writes `output_dir/hpo.json`, `trials.csv` and plots; the default storage is `output_dir/optuna.db`.

    Relative paths are under the work root (ATFT_HOME); output_dir None is `<work root>/runs/hpo`."""
    install_log_filter()
    root = WorkRoot.from_env()
    out = root.resolve(output_dir, root.runs / "hpo")
    cfg = AtftConfig.load(root.resolve_data(config_path)).with_overrides(max_epochs=max_epochs, device=device)
    data = resolve_data_path(data_path, root)
    cache = cached_build(data, root.resolve(cache_dir, root.cache), cfg.cache, S3Options.from_env(), require=cfg.data)
    return run_hpo_stage(cache=cache, run_dir=out, config=cfg, n_trials=n_trials,
                         study_name=study_name, storage=root.resolve_storage(storage), workers=parallel,
                         pruner=pruner, seed=seed,
                         timeout_s=timeout_s, search_space=search_space, dispatch=gpu_stage,
                         exchange=S3Options.artifacts_from_env())


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
