"""The worker loop: run queued trials with `study.optimize`, and K such workers on one host.

How K workers run exactly the N queued trials, each once: `prepare_study` queues them
(`enqueue_trial`), worker i of K runs `study.optimize(objective, n_trials=share(N, K, i))`, and every
`study.ask()` inside `optimize` claims the oldest queued trial (atomic in the storage: one worker
wins each claim). The shares add up to N and the queue never holds fewer trials than the asks still
to come, so no ask ever creates a trial of its own. (A stop callback that counts finished trials,
like `MaxTrialsCallback`, overshoots when two workers check at the same moment.)

Trials of dead workers end on every storage, and are retried (up to `max_retry` times) with the same
parameters. On a SQL storage Optuna's `optimize` keeps the heartbeat of a running trial and, before
each ask, marks trials of dead workers FAIL; the storage's `RetryHeartbeatStaleTrialCallback` queues
their retries. A journal file has no heartbeat: `end_stale_trials` asks this host whether each
RUNNING trial's worker process still runs (`hpo.liveness`), when a batch is queued, when a worker
starts and after each of its trials. Either way a retry is queued after the trials waiting then, so
it runs in this invocation when it was queued before the workers started, else in the next one
(or in a worker started with `n_trials=None`).

`run_worker_processes` is the one local fan-out (`atft hpo --parallel K`, the pipeline's HPO stage
without a gpu pool): K spawned processes, each running `run_worker`. Measured against Prefect's
`ProcessPoolTaskRunner` in bench/bench_hpo.py (`--fanout`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from atft_core.config import AtftConfig
from atft_core.hpo.config import FAIL_KIND_ATTR, FAIL_REASON_ATTR, HpoConfig
from atft_core.hpo.liveness import end_dead_workers_trials
from atft_core.hpo.objective import Objective, Score, TrialFailed, free_memory, train_score
from atft_core.hpo.space import SearchSpace
from atft_core.hpo.storage import build_storage, check_workers, expand_env, open_study
from atft_core.rundir import write_json

log = logging.getLogger("atft_core.hpo.worker")


@dataclass
class WorkerReport:
    """One worker's trials (number, state, value, reason, seconds split into training / storage / sampling)."""

    worker: str
    trials: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def worker_seed(seed: int, first_number: int, worker_index: int) -> int:
    """Distinct per worker and per invocation: same-seeded workers would sample identical trials."""
    return int(np.random.SeedSequence([seed, first_number, worker_index]).generate_state(1)[0])


def worker_params(seed: int, first_number: int, queued: int, workers: int) -> list[dict[str, int]]:
    """What each of `workers` workers gets: its index, its sampler seed and its share of the `queued` trials."""
    return [{"worker_index": i, "sampler_seed": worker_seed(seed, first_number, i),
             "n_trials": share(queued, workers, i)} for i in range(workers)]


def batch_key(batch: Mapping[str, Any]) -> str:
    """Names one batch of queued trials (storage, study, the batch's own tag). A retried nightly queues a
    new batch, so its worker runs get new idempotency keys and really run (the parent's run id would
    hand back the old, finished worker runs and leave the new trials queued)."""
    where = hashlib.blake2b(str(batch["storage_url"]).encode(), digest_size=6).hexdigest()
    return f"hpo-{where}-{batch['study_name']}-{batch['batch']}"


def trains_on_gpu(device: str) -> bool:
    """Whether a training with `device` lands on a CUDA GPU here (one training per GPU: local workers
    that would share it run one at a time)."""
    if device == "cpu":
        return False
    import torch

    return device == "cuda" or torch.cuda.is_available()


def worker_file(output_dir: str | Path, worker_index: int, suffix: str) -> Path:
    return Path(output_dir) / "workers" / f"worker-{worker_index}.{suffix}"


def share(queued: int, workers: int, worker_index: int) -> int:
    """Worker `worker_index`'s part of `queued` trials; the parts of all `workers` add up to `queued`."""
    return queued // workers + (worker_index < queued % workers)


def end_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, hpo: HpoConfig) -> None:
    """Fail the RUNNING trials of dead workers and queue their retries (see the module docstring).

    While a dead worker's trial stays RUNNING, the constant liar counts it as a bad guess near its
    parameters, and every later suggestion avoids them.
    """
    if isinstance(storage, JournalStorage):
        end_dead_workers_trials(study, storage, max_retry=hpo.max_retry)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # by heartbeat; a no-op on a storage without one


def queued_trials(study: optuna.Study) -> int:
    """Trials waiting in the queue now."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_worker(cache_path: str | Path, base_cfg: AtftConfig, hpo: HpoConfig, *, storage_url: str,
               n_trials: int | None = None, worker_index: int = 0, sampler_seed: int | None = None,
               score: Score | None = None, env: Mapping[str, str] | None = None) -> WorkerReport:
    """Run `n_trials` queued trials (None: every trial queued now), or fewer when `hpo.timeout_s` passes.

    A worker started alone with `n_trials=None` drains the queue; K workers started together each
    get their `share` so that together they run exactly the trials queued.
    """
    t0 = time.perf_counter()
    storage = build_storage(expand_env(storage_url, env), hpo)
    study = open_study(storage, hpo, sampler_seed)
    end_stale_trials(study, storage, hpo)
    n_trials = queued_trials(study) if n_trials is None else n_trials
    name = f"{socket.gethostname()}:{os.getpid()}#{worker_index}"
    objective = Objective(cache_path, base_cfg, SearchSpace.load(hpo.search_space), hpo.max_epochs,
                          score or train_score, worker=name)
    rows: list[dict[str, Any]] = []
    last = [time.perf_counter()]
    journal = isinstance(storage, JournalStorage)

    def record(study: optuna.Study, trial: FrozenTrial) -> None:
        now = time.perf_counter()
        rows.append(_row(trial, objective.timings.pop(trial.number, {}), trial_s=now - last[0]))
        last[0] = now
        if trial.state == TrialState.FAIL:
            log.warning("trial %d failed (%s); the study goes on", trial.number, trial.user_attrs.get(FAIL_REASON_ATTR))
            if trial.user_attrs.get(FAIL_KIND_ATTR) == "out_of_memory":
                free_memory()
        if journal:  # where a SQL storage's heartbeat check runs: before the next ask
            end_stale_trials(study, storage, hpo)

    if n_trials > 0:
        study.optimize(objective, n_trials=n_trials, timeout=hpo.timeout_s, catch=(TrialFailed,), callbacks=[record],
                       gc_after_trial=True)
    if len(rows) < n_trials:
        log.info("worker %s: time budget of %ss used after %d of %d trials; the rest stay queued for the next run",
                 name, hpo.timeout_s, len(rows), n_trials)
    return WorkerReport(name, rows, round(time.perf_counter() - t0, 3))


def _row(trial: FrozenTrial, timing: Mapping[str, float], trial_s: float) -> dict[str, Any]:
    """Seconds of one trial: training, sampling (TPE + writing the parameters) and storage (the rest:
    claim, stale check, attributes, epoch reports and prune checks, tell)."""
    objective_s, sample_s, report_s = (timing.get(k, 0.0) for k in ("objective_s", "sample_s", "report_s"))
    train_s = objective_s - sample_s - report_s
    storage_s = max(0.0, trial_s - objective_s) + report_s
    return {"number": trial.number, "state": trial.state.name,
            "value": trial.value if trial.state == TrialState.COMPLETE else None,
            "reason": trial.user_attrs.get(FAIL_REASON_ATTR) or None, "objective_s": round(objective_s, 4),
            "train_s": round(train_s, 4), "storage_s": round(storage_s, 4), "sample_s": round(sample_s, 4),
            "calls_s": {"outside_objective": round(max(0.0, trial_s - objective_s), 4), "report": round(report_s, 4),
                        "sample": round(sample_s, 4)}}


# K workers on this host -----------------------------------------------------------------------------
def run_worker_processes(cache_path: str | Path, base_cfg: AtftConfig, hpo: HpoConfig, output_dir: str | Path, *,
                         storage_url: str, first_number: int, queued: int, workers: int,
                         score: Score | None = None) -> tuple[list[WorkerReport], list[str]]:
    """`workers` spawned processes share `queued` trials of one study; their reports and one error line
    per failed worker.

    Each writes `workers/worker-<i>.json` (its report) and `.log`. The storage URL is passed as given
    (placeholders unfilled): each process fills `${VAR}` from the environment it inherits.
    """
    check_workers(storage_url, processes=workers)
    output_dir = Path(output_dir)
    threads = max(1, (os.cpu_count() or 1) // workers)  # K CPU workers each using every core would slow all
    ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and open DB handles
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_limit_threads,
                                                initargs=(threads,)) as pool:
        futures = [pool.submit(_process_main, str(cache_path), base_cfg, hpo, str(output_dir), storage_url, i,
                               share(queued, workers, i), worker_seed(hpo.seed, first_number, i), score)
                   for i in range(workers)]
        reports, errors = [], []
        for i, fut in enumerate(futures):
            try:
                reports.append(WorkerReport(**fut.result()))
            except Exception as exc:  # a worker's bug or death; the other workers' trials are intact
                errors.append(f"worker {i}: {type(exc).__name__}: {exc} (log: {worker_file(output_dir, i, 'log')})")
    return reports, errors


def _limit_threads(threads: int) -> None:
    # Before torch is imported in this process: its pools size themselves from these once.
    os.environ.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})


def _process_main(cache_path: str, base_cfg: AtftConfig, hpo: HpoConfig, output_dir: str, storage_url: str,
                  worker_index: int, n_trials: int, sampler_seed: int, score: Score | None) -> dict[str, Any]:
    logfile = worker_file(output_dir, worker_index, "log")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    worker_file(output_dir, worker_index, "json").unlink(missing_ok=True)  # never read a previous run's report
    handler = logging.FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    optuna.logging.disable_default_handler()  # optuna's lines go to the worker's log file instead
    optuna.logging.enable_propagation()
    try:
        report = run_worker(cache_path, base_cfg, hpo, storage_url=storage_url, n_trials=n_trials,
                            worker_index=worker_index, sampler_seed=sampler_seed, score=score).to_dict()
    except BaseException:
        logging.getLogger(__name__).exception("worker %d stopped", worker_index)
        raise
    write_json(worker_file(output_dir, worker_index, "json"), report)
    return report
