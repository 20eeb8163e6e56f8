"""One HPO invocation: queue N trials in a study, let K workers drain them, summarise.

The study lives in storage, never in a process (see `hpo.storage`): a rerun with the same storage
and study name continues it (`load_if_exists`).

How K workers produce exactly N trials: `prepare_study` puts N *queued* trials into the study
(`enqueue_trial`, Optuna's WAITING state) and the workers run their shares of that queue
(`hpo.worker`); no worker creates a trial of its own. Trial numbers come from the storage, so they
are unique across processes and hosts.

Pure library: no Prefect here. `run_study` is the whole thing in one call (K local processes);
`prepare_study`, `hpo.worker.run_worker` and `hpo.report.finish_study` are its parts, for
orchestrators that run workers elsewhere (flows/hpo_stage.py starts them on the `gpu` work pool).
"""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from pathlib import Path

from atft_core.config import AtftConfig
from atft_core.errors import ConfigError
from atft_core.hpo.config import BATCH_ATTR, HpoConfig, StudyBatch
from atft_core.hpo.objective import Score
from atft_core.hpo.report import HpoSummary, finish_study
from atft_core.hpo.space import SearchSpace
from atft_core.hpo.storage import build_storage, check_workers, default_storage_url, display_url, open_study
from atft_core.hpo.worker import end_stale_trials, queued_trials, run_worker, run_worker_processes, worker_seed

log = logging.getLogger("atft_core.hpo.study")


class WorkerError(RuntimeError):
    """A worker process stopped with an error; the study and the other workers' trials are intact."""


def prepare_study(hpo: HpoConfig, storage_url: str) -> StudyBatch:
    """Create or load the study and queue `hpo.n_trials` trials for workers to drain.

    A study whose earlier trials sampled a parameter in a way the search space no longer does (its
    categorical choices changed, say) is refused before anything is queued: Optuna would fail every
    new trial of it. The study is left as it was.
    """
    space = SearchSpace.load(hpo.search_space)
    storage = build_storage(storage_url, hpo)
    study = open_study(storage, hpo)
    changed = space.changed_since(study.get_trials(deepcopy=False))
    if changed:
        raise ConfigError(changed, hint=(
            f"Optuna cannot change how a parameter is sampled within one study. Start a new study "
            f"(--study-name {hpo.study_name}-2, or a new name in the deployment's parameters), or give "
            f"--search-space a file with the study's own choices; study '{hpo.study_name}' is unchanged"))
    end_stale_trials(study, storage, hpo)  # their retries are queued ahead of this batch
    first = len(study.get_trials(deepcopy=False))
    batch = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    for _ in range(hpo.n_trials):
        study.enqueue_trial({}, user_attrs={BATCH_ATTR: batch})  # {}: every parameter left to the sampler
    queued = queued_trials(study)
    log.info("study %s (%s): %d trial(s) so far, queued %d (batch %s; %d waiting in all)", hpo.study_name,
             display_url(storage_url), first, hpo.n_trials, batch, queued)
    return StudyBatch(hpo.study_name, storage_url, batch, hpo.n_trials, first, queued)


def local_workers(hpo: HpoConfig) -> int:
    """How many worker processes run_study starts: never more than there are trials."""
    return max(1, min(hpo.parallel, hpo.n_trials))


def run_study(cache_path: str | Path, base_cfg: AtftConfig, hpo: HpoConfig, output_dir: str | Path, *,
              score: Score | None = None) -> HpoSummary:
    """Queue `hpo.n_trials` trials, run them on `hpo.parallel` workers, write hpo.json, trials.csv, plots.

    `score` replaces training (tests and benchmarks): `(trial, cfg, cache_path) -> float`; with
    several workers it must be a module-level function (it travels to the processes by name).
    The default storage is `output_dir/optuna.db`, or `output_dir/optuna.log` for several workers.
    """
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    SearchSpace.load(hpo.search_space)  # a bad file fails here, before anything is queued
    k = local_workers(hpo)
    url = hpo.storage or default_storage_url(output_dir, hpo.parallel)
    check_workers(url, processes=k)  # likewise a storage the workers could not share
    if k > 1 and score is not None:
        _check_picklable(score)
    batch = prepare_study(hpo, url)
    errors: list[str] = []
    if k == 1:
        reports = [run_worker(cache_path, base_cfg, hpo, storage_url=batch.storage_url, n_trials=batch.queued,
                              sampler_seed=worker_seed(hpo.seed, batch.first_number, 0), score=score)]
    else:
        reports, errors = run_worker_processes(cache_path, base_cfg, hpo, output_dir, storage_url=batch.storage_url,
                                               first_number=batch.first_number, queued=batch.queued, workers=k,
                                               score=score)
    summary = finish_study(hpo, batch, output_dir, reports, seconds=time.perf_counter() - t0, errors=errors)
    if errors:
        raise WorkerError(f"{'; '.join(errors)}; the report is in {output_dir / 'hpo.json'}")
    return summary


def _check_picklable(score: Score) -> None:
    try:
        pickle.dumps(score)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"score {score!r} must be a module-level function to run in worker processes") from exc
