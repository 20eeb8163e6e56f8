"""The real path, end to end: `deployments/stack.sh up` (what `make up` runs) starts a Prefect server
on a free loopback port with its own PREFECT_HOME, creates the pools, deploys the project's
prefect.yaml and starts a `cpu` and a `gpu` worker; `prefect deployment run atft/dryrun --watch`
then runs the pipeline on the cpu worker, which hands training to the gpu worker through
`run_deployment`. `stack.sh down` stops the workers, then the server.

Also checked here, because only a real server shows it: the nightly deployment's cron schedule
exists and the server's scheduler actually creates its runs (a wrong sqlalchemy version breaks
this silently).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.prefect_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deployments" / "stack.sh"
PREFECT = Path(sys.executable).with_name("prefect")

pytestmark = pytest.mark.slow


def _flow_runs(api: str, **filters) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={"limit": 50, **filters}, timeout=10).raise_for_status().json()


def _wait_for(what: str, fn, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_stack_deploy_run_on_pools_and_schedule(tmp_path, tiny_demo, tiny_config):
    home = tmp_path / "prefect-home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "ATFT_ARTIFACT"))}
    env.update(PREFECT_HOME=str(home), ATFT_PREFECT_PORT=str(port), PREFECT_BIN=str(PREFECT),
               PREFECT_WORKER_QUERY_SECONDS="2",  # workers poll every 2 s instead of 10
               OMP_NUM_THREADS="1")  # the flow runs share 2 cores with the server and two workers
    out = tmp_path / "runs"

    up = subprocess.run(["bash", str(STACK), "up"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout  # prints the UI address

        # Pools, the gpu concurrency limit and the three deployments, as prefect.yaml says.
        pools = httpx.post(f"{api}/work_pools/filter", json={}, timeout=10).json()
        assert {(p["name"], p["type"]) for p in pools} >= {("cpu", "process"), ("gpu", "process")}
        assert httpx.get(f"{api}/concurrency_limits/tag/gpu", timeout=10).json()["concurrency_limit"] == 1
        dep = {name: httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
               for name in ("atft/dryrun", "atft/nightly-hpo", "atft-gpu-stage/gpu", "atft-hpo-worker/gpu")}
        assert dep["atft/dryrun"]["work_pool_name"] == "cpu"
        assert dep["atft/dryrun"]["parameters"] == {"mode": "dryrun", "n_trials": 1, "max_epochs": 2}
        assert dep["atft-gpu-stage/gpu"]["work_pool_name"] == dep["atft-hpo-worker/gpu"]["work_pool_name"] == "gpu"
        assert dep["atft/dryrun"]["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]

        # The nightly schedule, and the runs the server's scheduler creates from it.
        nightly = dep["atft/nightly-hpo"]
        assert nightly["parameters"] == {"mode": "hpo", "n_trials": 5, "max_epochs": 10}
        assert [s["schedule"] for s in nightly["schedules"]] == [
            {"cron": "0 2 * * *", "timezone": "Asia/Tokyo", "day_or": True}]
        scheduled = _wait_for("scheduled nightly runs", lambda: _flow_runs(
            api, deployments={"id": {"any_": [nightly["id"]]}},
            flow_runs={"state": {"type": {"any_": ["SCHEDULED"]}}}), timeout=60)
        for run in scheduled:
            start = datetime.fromisoformat(run["expected_start_time"]).astimezone(ZoneInfo("Asia/Tokyo"))
            assert (start.hour, start.minute) == (2, 0), start

        # A dry run through the deployments: cpu worker -> run_deployment -> gpu worker.
        params = {"data_path": str(tiny_demo), "config_path": str(tiny_config), "max_epochs": 1,
                  "output_dir": str(out), "cache_dir": str(tmp_path / "cache"),
                  "require_gpu": "false", "device": "cpu",  # CPU on any host: a GPU host would require the GPU
                  "min_rankic": -1.0}  # one epoch on a tiny panel: the test is about orchestration
        cmd = [str(PREFECT), "deployment", "run", "atft/dryrun", "--watch"]
        for k, v in params.items():
            cmd += ["-p", f"{k}={v}"]
        run = subprocess.run(cmd, env={**env, "PREFECT_API_URL": api}, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        [pipeline] = _flow_runs(api, deployments={"id": {"any_": [dep["atft/dryrun"]["id"]]}})
        assert pipeline["state_type"] == "COMPLETED" and pipeline["work_pool_name"] == "cpu"
        [stage] = _flow_runs(api, flows={"name": {"any_": ["atft-gpu-stage"]}})
        assert stage["state_type"] == "COMPLETED"
        assert stage["work_pool_name"] == "gpu" and stage["deployment_id"] == dep["atft-gpu-stage/gpu"]["id"]
        parent = httpx.get(f"{api}/task_runs/{stage['parent_task_run_id']}", timeout=10).json()
        assert parent["flow_run_id"] == pipeline["id"]  # shown as the pipeline's subflow in the UI

        arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {
            "key": {"any_": ["dryrun-gate"]}, "flow_run_id": {"any_": [pipeline["id"]]}}}, timeout=10).json()
        assert len(arts) == 1 and "Dry-run gate: PASSED" in arts[0]["data"]

        [run_dir] = list(out.iterdir())
        assert run_dir.name.endswith(pipeline["id"][:8])
        assert json.loads((run_dir / "run.json").read_text())["parameters"]["gpu_stage"] == "atft-gpu-stage/gpu"
        assert json.loads((run_dir / "gate.json").read_text())["passed"] is True
    finally:
        down = subprocess.run(["bash", str(STACK), "down"], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not list(home.glob("*.pid"))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api}/health", timeout=2)
