"""Flow `atft`: build cache -> GPU dry run -> gate -> (mode "hpo") HPO study -> the night's product.

```
parquet panel ──► build cache ──► GPU stage (dry run) ──► gate ──► HPO study ──► challenger, champion decision,
                                                            │      (mode "hpo")   tomorrow's ranks, live record,
                                                            │                     health (flows/nightly.py)
                                                            └──► report, plots, S3 mirror (always)
```

A nightly whose live health is `degraded` ends in the Completed state named "Degraded": the work
is done, and the run page and the alert automation say the champion is slipping.

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

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import prefect
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from prefect.states import Completed

import atft_core
from atft_core.config import AtftConfig
from atft_core.hpo.storage import check_study_storage
from atft_core.nightly.health import DEGRADED
from atft_core.provenance import code_version, package_versions
from atft_core.redact import redact, redact_url
from atft_core.retention import in_use
from atft_core.rundir import find_run_dir, new_run_dir, write_json
from atft_core.s3.client import S3Options
from atft_core.s3.folders import check_reachable
from atft_core.stage_result import StageResult
from atft_core.workroot import WorkRoot
from flows import hpo_stage
from flows.common import resolve_data_path
from flows.gpu_stage import run_gpu_stage
from flows.nightly import run_night
from flows.params import (
    DEFAULT_TRIALS,
    GPU_START_TIMEOUT_S,
    GPU_TIMEOUT_S,
    Device,
    GpuDispatch,
    Mode,
    PipelineParams,
    Profile,
)
from flows.remote_stage import Deadlines, gpu_deployment_for
from tasks.cache import cached_build
from tasks.expected_errors import install_log_filter
from tasks.gate import GateFailed, check_gate, publish_gate_not_reached
from tasks.publish import mirror_run, publish_report
from tasks.retention import retention_task

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
    config_path: str | None = None,
    max_epochs: int | None = None,
    require_gpu: bool | None = None,
    device: Device | None = None,
    min_gpu_util: float | None = None,
    min_rankic: float | None = None,
    profile: Profile | None = None,
    resume_from: str | None = None,
    ensemble: int | None = None,
    output_dir: str | None = None,
    cache_dir: str | None = None,
    n_trials: int | None = None,
    hpo_max_epochs: int | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    challenger_ensemble: int | None = None,
    challenger_epochs: int | None = None,
    hpo_workers: int = 1,
    gpu_stage: GpuDispatch = "auto",
    gpu_start_timeout_s: float = GPU_START_TIMEOUT_S,
    gpu_timeout_s: float = GPU_TIMEOUT_S,
) -> dict[str, Any]:
    """Every parameter is a field of `flows.params.PipelineParams`: its type, range and meaning are there.

    They stay flat here because a deployment run names them one by one (`-p require_gpu=false`).
    """
    params = PipelineParams(**locals())
    install_log_filter()
    return _run(params)


@dataclass(frozen=True)
class _Plan:
    """A run's settings, every path absolute and the environment read once (at the flow boundary)."""

    root: WorkRoot
    out: Path
    cache_root: Path
    data: str
    cfg: AtftConfig
    hpo_cfg: AtftConfig
    storage: str | None
    target: S3Options | None
    s3: S3Options
    gpu_deployment: str | None
    deadlines: Deadlines


def _plan(p: PipelineParams) -> _Plan:
    """Paths resolved, configs built and checked, and everything that can fail before a cache build did.

    Paths resolve against the work root (`ATFT_HOME`): a deployment's flow run works in a throwaway
    folder, so nothing it makes may live there, and the gpu stage (another flow run, another throwaway
    folder) must find the cache and the run folder by the same absolute paths.
    """
    root = WorkRoot.from_env()
    p = p.model_copy(update={"config_path": root.resolve_data(p.config_path),
                             "resume_from": root.resolve_data(p.resume_from)})
    cfg, hpo_cfg = p.config(), p.hpo_config()  # before anything is read or written: ranges, not only types
    gpu_deployment = gpu_deployment_for(p.gpu_stage)
    if p.require_gpu is None:
        # A run from a deployment, or one training on the gpu pool, is meant for a GPU.
        require_gpu = current_deployment.id is not None or gpu_deployment is not None
        cfg = cfg.with_overrides(require_gpu=require_gpu)
    target = S3Options.artifacts_from_env()
    storage = root.resolve_storage(p.storage)
    if p.mode == "hpo":  # a study the workers cannot share is refused before the cache build and the gate
        check_study_storage(storage, root.studies, p.hpo_workers, p.n_trials or DEFAULT_TRIALS,
                            on_pool=gpu_deployment is not None, shared_disk=target is None)
    if target is not None:
        check_reachable(target)  # before the cache build: a wrong bucket is named now, not after the training
    return _Plan(root=root, out=root.resolve(p.output_dir, root.runs), cache_root=root.resolve(p.cache_dir, root.cache),
                 data=resolve_data_path(p.data_path, root), cfg=cfg,
                 hpo_cfg=hpo_cfg.with_overrides(require_gpu=cfg.gate.require_gpu),  # workers check the device alike
                 storage=storage, target=target, s3=S3Options.from_env(), gpu_deployment=gpu_deployment,
                 deadlines=Deadlines(start_s=p.gpu_start_timeout_s, total_s=p.gpu_timeout_s))


def _run(p: PipelineParams) -> dict[str, Any] | State:
    plan = _plan(p)
    run_dir = new_run_dir(plan.out, p.mode, current_flow_run.id or "local")
    write_json(run_dir / "run.json", _provenance(p, plan))
    get_run_logger().info("run folder %s", run_dir)

    hpo = night = None
    published = failed = False
    try:
        cache = cached_build(plan.data, plan.cache_root, plan.cfg.cache, plan.s3, require=plan.cfg.data)
        with in_use(run_dir, uses=[cache.path]):  # `atft gc` (or another night's) leaves both alone meanwhile
            try:
                stage = run_gpu_stage(plan.gpu_deployment, cache.path, plan.cfg.to_dict(), run_dir,
                                      plan.deadlines, exchange=plan.target)
            except Exception as exc:
                # The UI's gate artifact says why there is no verdict: not only a red run and a log line.
                publish_gate_not_reached(str(run_dir), redact(str(exc)))
                raise
            gate = check_gate(stage, str(run_dir), return_state=True)  # report first; raises below if failed
            publish_report(str(run_dir), stage)  # plots and tables also when the gate failed: when they matter
            published = True
            if p.mode == "hpo" and gate.is_completed():
                # The default study lives in the work root's studies/, not in this run's folder: nights continue it.
                hpo = hpo_stage.run_hpo_stage(cache=cache, run_dir=run_dir, config=plan.hpo_cfg, n_trials=p.n_trials,
                                              study_name=p.study_name, storage=plan.storage, workers=p.hpo_workers,
                                              study_dir=plan.root.studies, dispatch=p.gpu_stage,
                                              deadlines=plan.deadlines, exchange=plan.target)
                night = run_night(cache=cache, run_dir=run_dir, cfg=plan.cfg, best_params=hpo.get("best_params") or {},
                                  root=plan.root, out=plan.out, gpu_deployment=plan.gpu_deployment,
                                  deadlines=plan.deadlines, target=plan.target)
        if p.mode == "hpo" and current_deployment.id is not None:
            _collect_garbage(plan.root)
    except BaseException:
        failed = True
        raise
    finally:
        _save_run(run_dir, plan.target, report=not published, failed=failed)
    gate.result()  # a failed gate ends the run Failed (GateFailed), after everything was saved
    result = {"run_dir": str(run_dir), "mode": p.mode, "passed": stage.passed, "gate": stage.gate,
              "metrics": stage.metrics, "hpo": hpo, "night": night.summary() if night else None,
              "cache": {"path": cache.path, "hit": cache.hit, "fingerprint": cache.fingerprint}}
    if night is not None and night.health.state == DEGRADED:
        return degraded_state(result, night.health.reasons)
    return result


def degraded_state(result: dict[str, Any], reasons: list[str]) -> State:
    """The end of a night whose work is done while the champion's live health is degraded.

    A named state, not a silent number: the run page says Degraded, and the alert automation
    (deployments/setup_alerts.py) fires on its event `prefect.flow-run.Degraded`.
    """
    return Completed(name="Degraded", message="; ".join(reasons[:1]) or "live health degraded", data=result)


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
        if report and StageResult.exists(run_dir):
            publish_report(str(run_dir), StageResult.read(run_dir))
        if target is not None:
            mirror_run(str(run_dir), target)
    except Exception as exc:
        if not failed:
            raise
        get_run_logger().error("saving the failed run's folder %s also failed: %s", run_dir, redact(str(exc)))


def _provenance(p: PipelineParams, plan: _Plan) -> dict[str, Any]:
    """run.json: who/what/when of this run. URLs are redacted: an Optuna storage URL may hold a password."""
    params = dict(mode=p.mode, data_path=plan.data, max_epochs=p.max_epochs, hpo_max_epochs=p.hpo_max_epochs,
                  n_trials=p.n_trials, study_name=p.study_name, storage=plan.storage, output_dir=str(plan.out),
                  cache_dir=str(plan.cache_root), config_path=p.config_path, work_root=str(plan.root.home),
                  gpu_stage=plan.gpu_deployment or "in-process")
    params = {k: (redact_url(v) if isinstance(v, str) and "://" in v else v) for k, v in params.items()}
    return {
        "flow_run_id": current_flow_run.id, "flow_run_name": current_flow_run.name,
        "deployment_id": current_deployment.id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": params, "config": plan.cfg.to_dict(),
        "artifact_target": plan.target.where if plan.target else None,
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
    run_dir = find_run_dir(root.resolve(params.get("output_dir"), root.runs), run_id, params.get("mode") or "dryrun")
    stage = StageResult.read(run_dir) if run_dir and StageResult.exists(run_dir) else None
    summary = {"ok": bool(state.is_completed()), "state": state.name, "flow_run_id": run_id,
               "run_dir": str(run_dir) if run_dir else None, "passed": stage.passed if stage else None,
               "gate": stage.gate if stage else None, "metrics": stage.metrics if stage else None,
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
