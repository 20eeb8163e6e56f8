"""Flow `atft`: build cache -> GPU dry run -> gate -> (mode "hpo") HPO study.

```
parquet panel ──► build cache ──► GPU stage (dry run) ──► gate ──► HPO study (mode "hpo")
                                                            └──► report, plots, S3 mirror (always)
```

"Always" means: on every run that got far enough to have them, failed or not (try/finally): a
failed GPU stage or HPO stage still leaves its run folder, its report and its S3 copy. Every wait is
finite: the gpu pool has start and total deadlines (`gpu_start_timeout_s`, `gpu_timeout_s`) and the
flow itself a `timeout_seconds`.

Everything the flow takes from the environment (the S3 mirror target, S3 read options) is read
here, once, at the flow boundary, and passed down as typed values. The mirror target is also the
exchange with gpu workers on other hosts: when a stage runs on the gpu pool, the cache goes up and
the stage's files come back through it (flows/gpu_stage.py), so no disk needs to be shared. Each run writes into its own
new folder under `output_dir`; the gate's verdict is read from that folder.

Every path is made absolute at the top of the flow, against the work root (`ATFT_HOME`,
atft_core.workroot): a deployment's flow run works in a throwaway folder, so nothing it makes may
live there, and the gpu stage (another flow run, another throwaway folder) must find the cache and
the run folder by the same absolute paths.

`run_pipeline(**params)` is the plain-function entry point for the CLI (`atft dryrun`,
`atft pipeline`): with PREFECT_API_URL set the run shows up in that server's UI like any other.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import prefect
from prefect import flow, get_run_logger
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

import atft_core
from atft_core.config import AtftConfig, validate_config
from atft_core.hpo.storage import check_study_storage
from atft_core.provenance import code_version, package_versions
from atft_core.redact import redact, redact_url
from atft_core.retention import in_use
from atft_core.rundir import find_run_dir, new_run_dir, read_json, write_json
from atft_core.s3.client import S3Options
from atft_core.s3.folders import check_reachable
from atft_core.workroot import WorkRoot
from flows import hpo_stage
from flows.common import build_config, resolve_data_path
from flows.gpu_stage import run_gpu_stage
from flows.remote_stage import Deadlines, GpuDispatch, gpu_deployment_for
from tasks.cache import cached_build
from tasks.gate import GateFailed, check_gate, publish_gate_not_reached
from tasks.publish import mirror_run, publish_report
from tasks.retention import retention_task
from tasks.train import STAGE_FILE, read_stage

Mode = Literal["dryrun", "hpo"]
# Longer than the gpu pool's total deadline plus a nightly HPO study; a run past it ends Failed
# (TimeoutError) instead of Running forever while the next night's run piles on.
PIPELINE_TIMEOUT_S = 12 * 3600


def run_name() -> str:
    """`dryrun-2026-11-30-0200`, `nightly-hpo-...`: the deployment's name (else the mode) and the UTC start."""
    name = current_deployment.name or current_flow_run.parameters.get("mode") or "atft"
    return f"{name}-{datetime.now(UTC):%Y-%m-%d-%H%M}"



@flow(name="atft", flow_run_name=run_name, timeout_seconds=PIPELINE_TIMEOUT_S,
      description="Nightly ATFT-GAT-FAN pipeline: cache -> GPU dry run -> gate -> HPO study.")
def atft_pipeline(
    mode: Mode = "dryrun",
    data_path: str | None = None,
    max_epochs: int | None = None,
    n_trials: int | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    output_dir: str | None = None,
    cache_dir: str | None = None,
    min_gpu_util: float | None = None,
    min_rankic: float | None = None,
    require_gpu: bool | None = None,
    device: str | None = None,
    config_path: str | None = None,
    gpu_stage: GpuDispatch = "auto",
    hpo_workers: int = 1,
    profile: str | None = None,
    resume_from: str | None = None,
    ensemble: int | None = None,
    hpo_max_epochs: int | None = None,
    gpu_start_timeout_s: float = Deadlines.start_s,
    gpu_timeout_s: float = Deadlines.total_s,
) -> dict[str, Any]:
    """Parameters left as None keep the config file's (or the library's) defaults.

    Paths (data_path, output_dir, cache_dir, config_path, resume_from, a file storage): absolute as
    given, a relative one under the work root (`ATFT_HOME`), never under this run's working folder.
    output_dir None: `<work root>/runs`; cache_dir None: `<work root>/cache`; the default HPO study
    lives in `<work root>/studies`, so nightly runs continue it.

    max_epochs: the gate's dry run; hpo_max_epochs: each HPO trial (None: the same as max_epochs).
    gpu_start_timeout_s / gpu_timeout_s: a gpu-pool run not started / not finished by then is cancelled
    and this run fails naming the pool.

    hpo_workers: HPO workers sharing the study: runs of `atft-hpo-worker/gpu` (PostgreSQL storage when
    more than one), or without the gpu pool processes on this host (a journal file by default).

    require_gpu=None means: required whenever this run comes from a deployment (or trains on the `gpu`
    pool); in-process it is required when the trainer's device resolves to CUDA (the gate adds that
    itself). Only an explicit False turns the deployment rule off.
    gpu_stage: "auto" (the gpu deployment when this run itself comes from a deployment; there, a
    missing gpu deployment fails the run), "deployment" or "local" (in-process subflow).
    profile: the panel's column layout ("auto", "atft", "gogooku3"); None keeps the config's.
    resume_from: a checkpoint.pt to continue training from (same panel layout, else a clear error).
    ensemble: models trained from seeds seed..seed+K-1 whose mean is the prediction (HPO trials train one).
    """
    logger = get_run_logger()
    # The environment is read here and nowhere below.
    target = S3Options.artifacts_from_env()
    s3 = S3Options.from_env()
    root = WorkRoot.from_env()
    out, cache_root = root.resolve(output_dir, root.runs), root.resolve(cache_dir, root.cache)
    config_path = root.resolve_data(config_path)
    resume_from = root.resolve_data(resume_from)
    storage = root.resolve_storage(storage)

    cfg = build_config(config_path, max_epochs=max_epochs, device=device, min_gpu_util=min_gpu_util,
                       min_rankic=min_rankic, require_gpu=require_gpu, profile=profile,
                       resume_from=resume_from, ensemble=ensemble)
    hpo_cfg = build_config(config_path, max_epochs=hpo_max_epochs or max_epochs, device=device, profile=profile)
    validate_config(cfg)  # before anything is read or written: ranges, not only types
    validate_config(hpo_cfg)
    gpu_deployment = gpu_deployment_for(gpu_stage)
    if require_gpu is None:
        require_gpu = current_deployment.id is not None or gpu_deployment is not None
        cfg = dataclasses.replace(cfg, gate=dataclasses.replace(cfg.gate, require_gpu=require_gpu))
    # The HPO workers on the gpu pool check their device by the same rule as the gate's stage.
    hpo_cfg = dataclasses.replace(hpo_cfg, gate=dataclasses.replace(hpo_cfg.gate, require_gpu=cfg.gate.require_gpu))
    if mode == "hpo":  # a study the workers cannot share is refused before the cache build and the gate
        check_study_storage(storage, root.studies, hpo_workers, n_trials or hpo_stage.DEFAULT_TRIALS,
                            on_pool=gpu_deployment is not None, shared_disk=target is None)
    if target is not None:
        check_reachable(target)  # before the cache build: a wrong bucket is named now, not after the training
    data = resolve_data_path(data_path, root)
    run_dir = new_run_dir(out, mode, current_flow_run.id or "local")
    write_json(run_dir / "run.json", _provenance(dict(
        mode=mode, data_path=data, max_epochs=max_epochs, hpo_max_epochs=hpo_max_epochs, n_trials=n_trials,
        study_name=study_name, storage=storage, output_dir=str(out), cache_dir=str(cache_root),
        config_path=config_path, work_root=str(root.home),
        gpu_stage=gpu_deployment or "in-process"), cfg=cfg, target=target))
    logger.info("run folder %s", run_dir)

    hpo = None
    published = failed = False
    try:
        cache = cached_build(data, cache_root, cfg.cache, s3, require=cfg.data)
        deadlines = Deadlines(start_s=gpu_start_timeout_s, total_s=gpu_timeout_s)
        with in_use(run_dir, uses=[cache["path"]]):  # `atft gc` (or another night's) leaves both alone meanwhile
            try:
                stage = run_gpu_stage(gpu_deployment, cache["path"], cfg.to_dict(), run_dir, deadlines,
                                      exchange=target)
            except Exception as exc:
                # The UI's gate artifact says why there is no verdict: not only a red run and a log line.
                publish_gate_not_reached(str(run_dir), redact(str(exc)))
                raise
            gate = check_gate(stage, str(run_dir), return_state=True)  # report first; raises below if failed
            publish_report(str(run_dir), stage)  # plots and tables also when the gate failed: when they matter
            published = True
            if mode == "hpo" and gate.is_completed():
                # The default study lives in the work root's studies/, not in this run's folder: nights continue it.
                hpo = hpo_stage.run_hpo_stage(cache=cache, run_dir=run_dir, config=hpo_cfg, n_trials=n_trials,
                                              study_name=study_name, storage=storage, workers=hpo_workers,
                                              study_dir=root.studies, dispatch=gpu_stage, deadlines=deadlines,
                                              exchange=target)
        if mode == "hpo" and current_deployment.id is not None:
            _collect_garbage(root)
    except BaseException:
        failed = True
        raise
    finally:
        _save_run(run_dir, target, report=not published, failed=failed)
    gate.result()  # a failed gate ends the run Failed (GateFailed), after everything was saved
    return {"run_dir": str(run_dir), "mode": mode, "passed": stage["passed"], "gate": stage["gate"],
            "metrics": stage["metrics"], "cache": {k: cache[k] for k in ("path", "hit", "fingerprint")},
            "hpo": hpo}


def _collect_garbage(root: WorkRoot) -> None:
    """The nightly's retention step; a failure is logged, never the night's result (it removes, it makes nothing)."""
    try:
        retention_task(str(root.home))
    except Exception as exc:
        get_run_logger().warning("retention step failed (the night's results are intact): %s", exc)


def _save_run(run_dir: Path, target: S3Options | None, *, report: bool, failed: bool) -> None:
    """Report (when not yet published) and S3 mirror of whatever the run folder holds.

    On a run that is already failing, a publishing error is logged, never raised: it must not
    replace the failure that matters.
    """
    try:
        if report and (run_dir / STAGE_FILE).exists():
            publish_report(str(run_dir), read_stage(run_dir))
        if target is not None:
            mirror_run(str(run_dir), target)
    except Exception as exc:
        if not failed:
            raise
        get_run_logger().error("saving the failed run's folder %s also failed: %s", run_dir, redact(str(exc)))


def _provenance(params: dict[str, Any], cfg: AtftConfig, target: S3Options | None) -> dict[str, Any]:
    """run.json: who/what/when of this run. URLs are redacted: an Optuna storage URL may hold a password."""
    params = {k: (redact_url(v) if isinstance(v, str) and "://" in v else v) for k, v in params.items()}
    return {
        "flow_run_id": current_flow_run.id, "flow_run_name": current_flow_run.name,
        "deployment_id": current_deployment.id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": params, "config": cfg.to_dict(),
        "artifact_target": target.where if target else None,
        "versions": {"atft": atft_core.__version__, "prefect": prefect.__version__, **package_versions()},
        "code": code_version(),  # which commit the checkout (or the worker's clone) ran
    }


def run_pipeline(**params: Any) -> dict[str, Any]:
    """Run flow `atft` and summarise it for the CLI: state, run folder, gate.

    Returns for Completed runs (`ok` True) and for failed gates (`ok` and `passed` False, `error`
    set): a failed gate is an answer, not a crash. Any other failure (bad dataset, training crash, S3 mirror failure)
    re-raises the original exception so the caller can map it to an exit code.
    """
    # Without PREFECT_API_URL Prefect starts a throwaway local server; on a busy 2-core machine it
    # needs longer than the default 20 s to answer.
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:
                             max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), 90)}):
        state = atft_pipeline(**params, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    root = WorkRoot.from_env()
    run_dir = find_run_dir(root.resolve(params.get("output_dir"), root.runs), run_id)
    stage_file = run_dir / STAGE_FILE if run_dir else None
    stage = read_json(stage_file) if stage_file and stage_file.exists() else {}
    summary = {"ok": bool(state.is_completed()), "state": state.name, "flow_run_id": run_id,
               "run_dir": str(run_dir) if run_dir else None,
               "passed": stage.get("passed"), "gate": stage.get("gate"), "metrics": stage.get("metrics"),
               "error": None}
    if state.is_completed():
        return summary
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, GateFailed):
        summary["error"] = redact(str(exc))
        return summary
    if isinstance(exc, BaseException):
        raise exc
    raise RuntimeError(f"flow run {run_id} ended {state.name}: {redact(state.message or '')}")


if __name__ == "__main__":  # `python -m flows.pipeline` runs the demo dry run once
    print(run_pipeline())
