"""HPO tasks: queue the study's trials, run a worker, summarise, publish. Logic in `atft_core.hpo`.

A worker's report travels through the output folder (`workers/worker-<i>.json`), like the GPU
stage's `stage.json`: a worker on the `gpu` pool runs in another process, often on another host.
The storage URL may hold `${VAR}` placeholders; each process fills them from its own environment,
so a database password never becomes a parameter shown in the UI.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from atft_core.config import DryRunConfig
from atft_core.hpo.study import (
    HpoConfig,
    StudyBatch,
    WorkerReport,
    build_storage,
    display_url,
    finish_study,
    prepare_study,
    run_worker,
    spawn_worker,
    trial_rows,
    worker_file,
)
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
      description="Drain the study's queue of trials: train, report each epoch, prune, record.")
def hpo_worker_task(cache_path: str, config: dict[str, Any], hpo: dict[str, Any], output_dir: str,
                    worker_index: int, sampler_seed: int, subprocess: bool = False) -> dict[str, Any]:
    """One worker. `subprocess=True` runs it as its own process (several workers in one flow run)."""
    logger = get_run_logger()
    cfg, base = HpoConfig.from_dict(hpo), DryRunConfig.from_dict(config)
    out = Path(output_dir)
    if subprocess:
        import os
        import tempfile

        with tempfile.TemporaryDirectory(prefix="atft-hpo-spec-") as spec_dir:
            threads = max(1, (os.cpu_count() or 1) // max(1, cfg.parallel))
            proc = spawn_worker(cache_path, base, cfg, out, storage_url=cfg.storage or "", worker_index=worker_index,
                                sampler_seed=sampler_seed, spec_dir=spec_dir, threads=threads)
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"HPO worker {worker_index} exited with code {code}; its log is "
                               f"{worker_file(out, worker_index, 'log')}")
        report = json.loads(worker_file(out, worker_index, "json").read_text())
    else:
        report = run_worker(cache_path, base, cfg, out, storage_url=cfg.storage, worker_index=worker_index,
                            sampler_seed=sampler_seed).to_dict()
        path = worker_file(out, worker_index, "json")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, report)
    states = [t["state"] for t in report["trials"]]
    logger.info("worker %s ran %d trial(s): %s", report["worker"], len(states),
                {s: states.count(s) for s in sorted(set(states))})
    return report


@task(name="hpo-report", cache_policy=NO_CACHE, persist_result=False,
      description="Summarise the study: hpo.json, trials.csv, plots.")
def finish_hpo_task(hpo: dict[str, Any], batch: dict[str, Any], output_dir: str, reports: list[dict[str, Any]],
                    seconds: float, errors: list[str]) -> dict[str, Any]:
    cfg = HpoConfig.from_dict(hpo)
    summary = finish_study(cfg, StudyBatch(**batch), output_dir, [WorkerReport(**r) for r in reports],
                           seconds=seconds, errors=errors)
    import optuna

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


def summary_markdown(summary: dict[str, Any]) -> str:
    best = summary.get("best_value")
    lines = [f"## HPO study `{summary['study_name']}`", "",
             f"Best validation RankIC: **{best:+.4f}** (trial {summary.get('best_trial')})" if best is not None
             else "No completed trial yet.", "",
             "| | complete | pruned | failed | running | waiting | total |", "|---|---:|---:|---:|---:|---:|---:|"]
    columns = ("complete", "pruned", "failed", "running", "waiting", "total")
    for label, counts in (("this run", summary["counts"]), ("whole study", summary["study_counts"])):
        lines.append(f"| {label} | " + " | ".join(str(counts.get(k, 0)) for k in columns) + " |")
    if summary.get("best_params"):
        lines += ["", "| parameter | best value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                  for k, v in summary["best_params"].items()]
    lines += ["", f"Storage: `{summary['storage']}`. Watch it live: `{summary['dashboard']}`"]
    if summary.get("errors"):
        lines += ["", "**Worker errors:**"] + [f"- {e}" for e in summary["errors"]]
    return "\n".join(lines) + "\n"
