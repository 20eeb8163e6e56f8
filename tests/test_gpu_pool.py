"""Flow `atft` and the gpu pool, under the session's Prefect test harness (a real API, no worker):

- a gpu worker that never comes: the run fails within its start deadline, naming the pool and what
  to check, and the waiting child run is cancelled (a worker that appears later must not train it);
- inside a deployment a missing GPU deployment fails the run, and training on the cpu worker on
  purpose (gpu_stage=local) still requires a GPU: Failed, never a green gate without one;
- a stage that fails after the gate still leaves its report, plots and S3 copy.

A run "from a deployment" is made the way a worker makes it: a flow run created from the deployment,
then executed by Prefect's `run_flow` (what the worker's subprocess calls), here in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from atft_core.rundir import find_run_dir
from flows.remote_stage import GPU_DEPLOYMENT, GpuStageFailed

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _drop_gpu_deployment() -> None:
    from prefect.exceptions import ObjectNotFound

    with _client() as c:
        try:
            c.delete_deployment(c.read_deployment_by_name(GPU_DEPLOYMENT).id)
        except ObjectNotFound:
            pass


@pytest.fixture
def gpu_deployment_without_worker():
    """`atft-gpu-stage/gpu` on a `gpu` pool nobody polls; removed afterwards."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from flows.gpu_stage import gpu_stage

    with _client() as c:
        try:
            c.create_work_pool(WorkPoolCreate(name="gpu", type="process"))
        except ObjectAlreadyExists:
            pass
    gpu_stage.to_deployment(name="gpu").apply(work_pool_name="gpu")
    yield
    _drop_gpu_deployment()


def _params(tiny_demo, tiny_config, tmp_path, **extra):
    return dict(data_path=str(tiny_demo), config_path=str(tiny_config), max_epochs=1, output_dir=str(tmp_path / "runs"),
                cache_dir=str(tmp_path / "cache"), min_rankic=-1.0, **extra)


def _s3_keys(endpoint: str, bucket: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_gpu_worker_that_never_comes_fails_within_the_deadline_and_the_child_is_cancelled(
        gpu_deployment_without_worker, tiny_demo, tiny_config, tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.pipeline import atft_pipeline

    monkeypatch.setenv("ATFT_ARTIFACT_URI", f"s3://{s3_bucket}/nightly")
    state = atft_pipeline(**_params(tiny_demo, tiny_config, tmp_path, gpu_stage="deployment",
                                    gpu_start_timeout_s=3), return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, GpuStageFailed)
    assert "no worker on pool 'gpu'" in str(exc) and "within 3s" in str(exc)
    assert "prefect worker start --pool gpu" in str(exc)

    run = find_run_dir(tmp_path / "runs", str(state.state_details.flow_run_id))
    with _client() as c:
        [child] = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"gpu-{run.name}"])))
        parent = c.read_flow_run(state.state_details.flow_run_id)
    assert child.state.is_cancelled() and child.work_pool_name == "gpu"
    assert parent.name.startswith("dryrun-")
    # What the run had (its provenance) is saved and mirrored even though it failed.
    assert (run / "run.json").is_file() and not (run / "stage.json").exists()
    assert f"nightly/{run.name}/run.json" in _s3_keys(s3_endpoint, s3_bucket)


def _run_from_deployment(name: str, parameters: dict):
    from prefect.flow_engine import run_flow

    from flows.pipeline import atft_pipeline

    dep_id = atft_pipeline.to_deployment(name=name).apply()
    with _client() as c:
        flow_run = c.create_flow_run_from_deployment(dep_id, parameters=parameters)
    return run_flow(atft_pipeline, flow_run=flow_run, parameters=parameters, return_type="state")


def test_inside_a_deployment_a_missing_gpu_deployment_is_an_error_not_a_cpu_fallback(tiny_demo, tiny_config, tmp_path):
    _drop_gpu_deployment()
    state = _run_from_deployment("dryrun-no-gpu", _params(tiny_demo, tiny_config, tmp_path))
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, GpuStageFailed) and f"deployment {GPU_DEPLOYMENT} does not exist" in str(exc)
    assert not (tmp_path / "cache").exists()  # failed before building or training anything


def test_inside_a_deployment_training_on_the_cpu_worker_still_requires_a_gpu(tiny_demo, tiny_config, tmp_path):
    import platform

    from prefect.artifacts import Artifact

    state = _run_from_deployment("dryrun-local", _params(tiny_demo, tiny_config, tmp_path, gpu_stage="local"))
    assert state.is_failed()  # not green: this machine has no GPU, and the run came from a deployment
    exc = state.result(raise_on_failure=False)
    # The stage checks its device before training: it names this host and the way out.
    assert isinstance(exc, GpuStageFailed) and platform.node() in str(exc) and "require_gpu=false" in str(exc)
    run = find_run_dir(tmp_path / "runs", str(state.state_details.flow_run_id))
    assert json.loads((run / "run.json").read_text())["config"]["gate"]["require_gpu"] is True
    assert not (run / "stage.json").exists()  # nothing was trained on the CPU
    # The UI's gate artifact says there is no verdict, and why, instead of showing an older run's.
    gate = Artifact.get("dryrun-gate")
    assert gate.flow_run_id == state.state_details.flow_run_id
    assert "Dry-run gate: FAILED (no verdict)" in gate.data and "no usable CUDA GPU" in gate.data
    assert str(run) in gate.data


def test_a_stage_failing_after_the_gate_still_publishes_report_and_mirror(tiny_demo, tiny_config, tmp_path,
                                                                          s3_endpoint, s3_bucket, monkeypatch):
    from flows.pipeline import atft_pipeline

    monkeypatch.setenv("ATFT_ARTIFACT_URI", f"s3://{s3_bucket}/nightly")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the study's folder should be")
    # A real failure of the HPO stage: its Optuna storage cannot be opened.
    state = atft_pipeline(**_params(tiny_demo, tiny_config, tmp_path, mode="hpo", n_trials=1,
                                    storage=f"sqlite:///{blocker}/optuna.db"), return_state=True)
    assert state.is_failed()
    run = find_run_dir(tmp_path / "runs", str(state.state_details.flow_run_id))
    for name in ("gate.json", "stage.json", "plots/training.png", "plots/gpu_util.png"):
        assert (run / name).is_file(), name
    keys = _s3_keys(s3_endpoint, s3_bucket)
    assert {f"nightly/{run.name}/{n}" for n in ("gate.json", "stage.json", "plots/training.png")} <= keys


def test_gate_and_trials_get_their_own_epochs(tiny_demo, tiny_config, tmp_path, monkeypatch):
    import flows.hpo_stage
    from flows.pipeline import atft_pipeline

    seen = []
    monkeypatch.setattr(flows.hpo_stage, "run_hpo_stage", lambda **kw: seen.append(kw["config"]) or {})
    monkeypatch.setenv("ATFT_HOME", str(tmp_path / "home"))  # the night's registry: this test's own
    state = atft_pipeline(**_params(tiny_demo, tiny_config, tmp_path, mode="hpo", hpo_max_epochs=3),
                          return_state=True)
    assert state.is_completed()
    run = find_run_dir(tmp_path / "runs", str(state.state_details.flow_run_id), "hpo")  # not its challenger's
    assert json.loads((run / "stage.json").read_text())["config"]["train"]["max_epochs"] == 1  # the gate
    assert [c.train.max_epochs for c in seen] == [3]  # the trials
    assert Path(run / "run.json").is_file()


def test_a_retried_nightly_starts_new_hpo_worker_runs(tmp_path):
    """The worker runs' idempotency keys come from the study batch: a retry (a new batch of queued
    trials) creates new runs on the gpu pool; the same batch asked twice gets its one run back."""
    import dataclasses

    from prefect.deployments import run_deployment

    from atft_core.hpo.study import HpoConfig, default_storage_url, prepare_study
    from atft_core.hpo.worker import batch_key
    from flows.hpo_stage import HPO_WORKER_DEPLOYMENT, hpo_worker_flow

    hpo_worker_flow.to_deployment(name="gpu").apply()
    cfg = HpoConfig(n_trials=2, study_name="nightly", storage=default_storage_url(tmp_path))
    first = dataclasses.asdict(prepare_study(cfg, cfg.storage))
    retry = dataclasses.asdict(prepare_study(cfg, cfg.storage))  # the retried nightly queues its trials again
    assert retry["first_number"] == first["first_number"] + 2

    params = {"cache_path": "unused", "config": {}, "hpo": cfg.to_dict(), "output_dir": str(tmp_path)}
    runs = [run_deployment(HPO_WORKER_DEPLOYMENT, parameters=params, timeout=0, idempotency_key=f"{batch_key(b)}-w0")
            for b in (first, first, retry)]
    assert runs[0].id == runs[1].id  # the same batch: Prefect hands back the run it already has
    assert runs[2].id != runs[0].id  # a new batch: a new run that drains the new trials
    with _client() as c:
        for run in {r.id for r in runs}:
            c.delete_flow_run(run)


def test_a_gpu_worker_without_a_visible_gpu_names_the_problem(tiny_config, tmp_path, monkeypatch):
    """device=cuda on a worker whose GPU is gone (driver, CUDA_VISIBLE_DEVICES): a clear Failed, no crash."""
    import torch

    from flows.gpu_stage import gpu_stage

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the only mock: the GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    config = {"train": {"device": "cuda"}}
    state = gpu_stage(cache_path=str(tmp_path / "cache"), config=config, run_dir=str(tmp_path / "run"),
                      return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, GpuStageFailed) and "CUDA_VISIBLE_DEVICES=3" in str(exc) and "nvidia-smi" in str(exc)


def test_every_flow_that_can_wait_has_a_timeout():
    """A flow past its timeout ends Failed (TimeoutError) instead of Running forever."""
    from flows.gpu_stage import gpu_stage
    from flows.hpo_stage import hpo_worker_flow
    from flows.pipeline import atft_pipeline

    for f in (atft_pipeline, gpu_stage, hpo_worker_flow):
        assert f.timeout_seconds and f.timeout_seconds > 0, f.name
    # The pipeline outlives its own waits for the gpu pool, so those fail first, with their message.
    assert atft_pipeline.timeout_seconds > gpu_stage.timeout_seconds


def _gpu_stage_runs(run_dir_name: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with _client() as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"gpu-{run_dir_name}"])))


def test_a_run_queued_behind_a_live_worker_is_not_cancelled_at_the_start_deadline(
        gpu_deployment_without_worker, tiny_demo, tiny_config, tmp_path):
    """A gpu worker that heartbeats (busy with another run) keeps the queued run waiting past the start
    deadline; only the total deadline ends the wait, and its message says so."""
    from flows.pipeline import atft_pipeline

    with _client() as c:
        c.send_worker_heartbeat("gpu", "busy-gpu-worker", heartbeat_interval_seconds=60)
    try:
        state = atft_pipeline(**_params(tiny_demo, tiny_config, tmp_path, gpu_stage="deployment",
                                        gpu_start_timeout_s=1, gpu_timeout_s=8), return_state=True)
    finally:  # later tests need a pool that nobody serves
        with _client() as c:
            c.request("DELETE", "/work_pools/{work_pool_name}/workers/{name}",
                      path_params={"work_pool_name": "gpu", "name": "busy-gpu-worker"})
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, GpuStageFailed), exc
    assert "not finished within 8s" in str(exc) and "not started" not in str(exc)
    run = find_run_dir(tmp_path / "runs", str(state.state_details.flow_run_id))
    [child] = _gpu_stage_runs(run.name)
    assert child.state.is_cancelled() and "not finished within 8s" in child.state.message


def test_when_the_parent_ends_its_waiting_gpu_run_is_cancelled(gpu_deployment_without_worker, tiny_demo, tiny_config,
                                                               tmp_path):
    """The pipeline times out (its own flow timeout) while its gpu stage waits: the child does not stay queued
    for a worker to train it for nobody."""
    from flows.pipeline import atft_pipeline

    short = atft_pipeline.with_options(timeout_seconds=12)
    state = short(**_params(tiny_demo, tiny_config, tmp_path, gpu_stage="deployment", gpu_start_timeout_s=600),
                  return_state=True)
    assert not state.is_completed()
    run = find_run_dir(tmp_path / "runs", str(state.state_details.flow_run_id))
    [child] = _gpu_stage_runs(run.name)
    assert child.state.is_cancelled() and "the parent run ended" in child.state.message


def test_hpo_workers_nobody_starts_still_leave_the_hpo_report(gpu_deployment_without_worker, tiny_demo, tiny_config,
                                                              tmp_path):
    """Past the start deadline with no live worker, the worker runs are cancelled and the stage fails, after
    publishing its report (what was queued, what ran: nothing) like any other night."""
    from prefect import flow
    from prefect.artifacts import Artifact

    from atft_core.config import AtftConfig
    from atft_core.data.cache.build import build_cache
    from flows.hpo_stage import HpoStageFailed, hpo_worker_flow, run_hpo_stage
    from flows.remote_stage import Deadlines
    from tasks.cache import CacheRef

    hpo_worker_flow.to_deployment(name="gpu").apply(work_pool_name="gpu")
    cfg = AtftConfig.from_yaml(str(tiny_config))
    cache = build_cache(str(tiny_demo), tmp_path / "cache", cfg.cache)

    @flow
    def nightly_hpo_stage():
        return run_hpo_stage(cache=CacheRef(str(cache.path), cache.hit, cache.fingerprint, cache.summary),
                             run_dir=tmp_path / "nobody", config=cfg, n_trials=2,
                             study_name="deadline", storage=None, study_dir=tmp_path, dispatch="deployment",
                             deadlines=Deadlines(start_s=1, total_s=60))

    state = nightly_hpo_stage(return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, HpoStageFailed) and "no worker on pool 'gpu' is alive" in str(exc)
    report = json.loads((tmp_path / "nobody" / "hpo.json").read_text())
    assert report["counts"]["complete"] == 0
    summary = Artifact.get("hpo-summary")
    assert summary.flow_run_id == state.state_details.flow_run_id


def test_a_results_bucket_that_does_not_exist_fails_the_run_before_the_cache_build(tiny_demo, tiny_config, tmp_path,
                                                                                   s3_endpoint, monkeypatch):
    from atft_core.s3.folders import PublishError
    from flows.pipeline import atft_pipeline

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTFAKEKEYID0042")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("ATFT_ARTIFACT_URI", "s3://no-such-bucket-atft/nightly")
    state = atft_pipeline(**_params(tiny_demo, tiny_config, tmp_path), return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, PublishError) and "s3://no-such-bucket-atft/nightly" in str(exc) and "404" in str(exc)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()  # nothing built, nothing made
