"""HPO tasks: queue the study's trials, run workers, summarise, publish. Logic in `atft_core.hpo`.

A worker's report travels through the output folder (`workers/worker-<i>.json`), like the GPU
stage's `stage.json`: a worker on the `gpu` pool runs in another process, often on another host.
The storage URL may hold `${VAR}` placeholders; each process fills them from its own environment,
so a database password never becomes a parameter shown in the UI.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import optuna
from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from atft_core.config import AtftConfig
from atft_core.hpo.config import HpoConfig, StudyBatch
from atft_core.hpo.report import finish_study, summary_markdown, trial_rows
from atft_core.hpo.storage import build_storage, display_url
from atft_core.hpo.study import prepare_study
from atft_core.hpo.worker import WorkerReport, run_worker, run_worker_processes, worker_file
from atft_core.rundir import write_json

SUMMARY_KEY = "hpo-summary"
TRIALS_KEY = "hpo-trials"


@task(name="hpo-prepare", cache_policy=NO_CACHE, persist_result=False,
      description="Create or load the Optuna study and queue this run's trials.")
def prepare_hpo_task(hpo: dict[str, Any]) -> dict[str, Any]:
    cfg = HpoConfig.from_dict(hpo)
    batch = prepare_study(cfg, cfg.storage or "")
    get_run_logger().info("study %s on %s: %d trial(s) before this run, %d queued", batch.study_name,
                          display_url(batch.storage_url), batch.first_number, batch.n_trials)
    return dataclasses.asdict(batch)


@task(name="hpo-worker", tags=["hpo", "gpu"], cache_policy=NO_CACHE, persist_result=False,
      description="Drain the study's queue of trials in this process: train, report each epoch, prune, record.")
def hpo_worker_task(cache_path: str, config: dict[str, Any], hpo: dict[str, Any], output_dir: str,
                    worker_index: int, sampler_seed: int, n_trials: int | None = None) -> dict[str, Any]:
    """`n_trials` queued trials (this worker's share); None: every trial queued when it starts."""
    cfg = HpoConfig.from_dict(hpo)
    report = run_worker(cache_path, AtftConfig.from_dict(config), cfg, storage_url=cfg.storage or "",
                        n_trials=n_trials, worker_index=worker_index, sampler_seed=sampler_seed).to_dict()
    path = worker_file(output_dir, worker_index, "json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    _log_report(report)
    return report


@task(name="hpo-local-workers", tags=["hpo"], cache_policy=NO_CACHE, persist_result=False,
      description="K worker processes on this host drain the study's queue together.")
def hpo_local_workers_task(cache_path: str, config: dict[str, Any], hpo: dict[str, Any], output_dir: str,
                           first_number: int, queued: int, workers: int) -> dict[str, Any]:
    cfg = HpoConfig.from_dict(hpo)
    reports, errors = run_worker_processes(cache_path, AtftConfig.from_dict(config), cfg, output_dir,
                                           storage_url=cfg.storage or "", first_number=first_number, queued=queued,
                                           workers=workers)
    for report in reports:
        _log_report(report.to_dict())
    return {"reports": [r.to_dict() for r in reports], "errors": errors}


def _log_report(report: dict[str, Any]) -> None:
    states = [t["state"] for t in report["trials"]]
    get_run_logger().info("worker %s ran %d trial(s): %s", report["worker"], len(states),
                          {s: states.count(s) for s in sorted(set(states))})


@task(name="hpo-report", cache_policy=NO_CACHE, persist_result=False,
      description="Summarise the study: hpo.json, trials.csv, plots.")
def finish_hpo_task(hpo: dict[str, Any], batch: dict[str, Any], output_dir: str, reports: list[dict[str, Any]],
                    seconds: float, errors: list[str]) -> dict[str, Any]:
    cfg = HpoConfig.from_dict(hpo)
    summary = finish_study(cfg, StudyBatch(**batch), output_dir, [WorkerReport(**r) for r in reports],
                           seconds=seconds, errors=errors)
    study = optuna.load_study(study_name=batch["study_name"], storage=build_storage(batch["storage_url"], cfg))
    return {**summary.to_dict(), "trials": trial_rows(study)}


@task(name="hpo-publish", cache_policy=NO_CACHE, persist_result=False,
      description="Trials table, best parameters and plots of the study in the Prefect UI.")
def publish_hpo_task(summary: dict[str, Any]) -> None:
    rows = summary.get("trials") or []
    if rows:
        create_table_artifact(rows, key=TRIALS_KEY, description=f"Trials of study {summary['study_name']}")
    create_markdown_artifact(summary_markdown(summary), key=SUMMARY_KEY,
                             description="HPO study: best RankIC, best parameters, trial counts")
    files = summary.get("files") or {}
    for name, key in (("optimization_history.png", "hpo-plot-history"),
                      ("param_importances.png", "hpo-plot-importances")):
        path = Path(files.get(name, ""))
        if path.is_file():  # embedded: the UI cannot load a worker's local files
            create_image_artifact("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), key=key,
                                  description=name)
