"""The stack on a GPU host: `deployments/stack.sh up` (what `make up` runs) starts a Prefect server
on a free loopback port with its own PREFECT_HOME and basic auth, creates the pools (once: an
operator's edits survive the next `up`), deploys the project's prefect.yaml, creates the crash
detection and the alert (its webhook URL kept as a secret) and starts a `cpu` worker and one `gpu`
worker per GPU (a stand-in `nvidia-smi` lists two: the only mocked thing is the GPU), each with its
CUDA_VISIBLE_DEVICES in nvidia-smi's order. `stack.sh down` stops the workers, then the server.
The runs themselves, on the stack as a GPU-less host starts it, are in tests/test_users_path.py.

Also checked here, because only a real server shows it: the nightly deployment's cron schedule
exists and the server's scheduler actually creates its runs (a wrong sqlalchemy version breaks
this silently).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.prefect_fixtures import free_port

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deployments" / "stack.sh"
PREFECT = Path(sys.executable).with_name("prefect")

pytestmark = pytest.mark.slow


AUTH = ("atft", "pw-" + secrets.token_hex(8))
FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""


def _flow_runs(api: str, **filters) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={"limit": 50, **filters}, auth=AUTH,
                      timeout=10).raise_for_status().json()


def _get(url: str) -> httpx.Response:
    return httpx.get(url, auth=AUTH, timeout=10)


class _Receiver(BaseHTTPRequestHandler):
    """A webhook on loopback: keeps every POSTed body."""

    posts: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).posts.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Receiver.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.posts
    finally:
        server.shutdown()


def _process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_non_loopback_address_refused_without_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_SERVER_API_AUTH"))}
    env.update(PREFECT_HOME=str(tmp_path / "home"), ATFT_PREFECT_HOST="0.0.0.0", ATFT_PREFECT_PORT=str(free_port()),
               PREFECT_BIN=str(PREFECT))
    up = subprocess.run(["bash", str(STACK), "up"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "refusing to bind 0.0.0.0" in up.stderr and "PREFECT_SERVER_API_AUTH_STRING" in up.stderr
    assert not (tmp_path / "home" / "server.pid").exists()  # nothing started


def test_up_outside_a_git_branch_says_what_to_set(tmp_path):
    """Workers clone the code (prefect.yaml's git_clone): a copy not on a git branch is refused, nothing started."""
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "deployments", copy / "deployments")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "ATFT_GIT_"))}
    env.update(PREFECT_HOME=str(tmp_path / "home"), ATFT_PREFECT_PORT=str(free_port()), PREFECT_BIN=str(PREFECT))
    up = subprocess.run(["bash", str(copy / "deployments" / "stack.sh"), "up"], env=env, cwd=copy,
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "not on a git branch" in up.stderr and "ATFT_GIT_REPOSITORY and ATFT_GIT_BRANCH" in up.stderr
    assert not (tmp_path / "home").exists()  # nothing started


def _wait_for(what: str, fn, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_stack_pools_workers_deployments_and_schedule(tmp_path, webhook):
    home = tmp_path / "prefect-home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (fake_bin / "nvidia-smi").chmod(0o755)
    hook_url, posts = webhook
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "ATFT_ARTIFACT", "ATFT_GIT_"))}
    env.update(PREFECT_HOME=str(home), ATFT_PREFECT_PORT=str(port), PREFECT_BIN=str(PREFECT),
               PATH=f"{fake_bin}:{env['PATH']}", PREFECT_SERVER_API_AUTH_STRING=":".join(AUTH),
               ATFT_ALERT_WEBHOOK_URL=hook_url,
               PREFECT_WORKER_QUERY_SECONDS="2",  # workers poll every 2 s instead of 10
               OMP_NUM_THREADS="1")  # the flow runs share 2 cores with the server and three workers

    up = subprocess.run(["bash", str(STACK), "up"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout  # prints the UI address

        # Beyond /health, the API refuses a request without the basic-auth credentials.
        assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).status_code == 401
        assert httpx.post(f"{api}/flow_runs/filter", json={}, auth=("atft", "wrong"), timeout=10).status_code == 401

        # One gpu worker per GPU, each with its own CUDA_VISIBLE_DEVICES and --limit 1; no server-wide tag limit.
        assert "started worker gpu-0 on pool 'gpu' (CUDA_VISIBLE_DEVICES=0) --limit 1" in up.stdout
        for i in (0, 1):
            pid = int((home / f"worker-gpu-{i}.pid").read_text())
            assert _process_env(pid)["CUDA_VISIBLE_DEVICES"] == str(i)
            assert _process_env(pid)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # numbered as nvidia-smi lists them
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[cmdline.index(b"--limit") + 1] == b"1" and b"gpu" in cmdline
        assert _get(f"{api}/concurrency_limits/tag/gpu").status_code == 404

        # Pools and the four deployments, as prefect.yaml says.
        pools = httpx.post(f"{api}/work_pools/filter", json={}, auth=AUTH, timeout=10).json()
        assert {(p["name"], p["type"]) for p in pools} >= {("cpu", "process"), ("gpu", "process")}
        dep = {name: _get(f"{api}/deployments/name/{name}").json()
               for name in ("atft/dryrun", "atft/nightly-hpo", "atft-gpu-stage/gpu", "atft-hpo-worker/gpu")}
        assert dep["atft/dryrun"]["work_pool_name"] == "cpu"
        assert dep["atft/dryrun"]["parameters"] == {"mode": "dryrun", "max_epochs": 2}
        assert dep["atft-gpu-stage/gpu"]["work_pool_name"] == dep["atft-hpo-worker/gpu"]["work_pool_name"] == "gpu"
        # Every run heartbeats at the stack's period, whichever worker runs it: the crash automation counts on it.
        for d in dep.values():
            assert d["job_variables"]["env"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}, d["job_variables"]
        branch = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        assert dep["atft/dryrun"]["pull_steps"] == [  # stack.sh's defaults: this checkout, its branch
            {"prefect.deployments.steps.git_clone": {"repository": str(REPO), "branch": branch}}]

        # The nightly schedule, and the runs the server's scheduler creates from it.
        nightly = dep["atft/nightly-hpo"]
        assert nightly["parameters"] == {"mode": "hpo", "n_trials": 5, "max_epochs": 2, "hpo_max_epochs": 10}
        assert nightly["global_concurrency_limit"]["limit"] == 1
        assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        assert [s["schedule"] for s in nightly["schedules"]] == [
            {"cron": "0 2 * * *", "timezone": "Asia/Tokyo", "day_or": True}]
        scheduled = _wait_for("scheduled nightly runs", lambda: _flow_runs(
            api, deployments={"id": {"any_": [nightly["id"]]}},
            flow_runs={"state": {"type": {"any_": ["SCHEDULED"]}}}), timeout=60)
        for run in scheduled:
            start = datetime.fromisoformat(run["expected_start_time"]).astimezone(ZoneInfo("Asia/Tokyo"))
            assert (start.hour, start.minute) == (2, 0), start

        # The alert's webhook URL is a secret: kept in the block's secrets, never in plain text.
        blocks = httpx.post(f"{api}/block_documents/filter", json={}, auth=AUTH, timeout=10).json()
        [block] = [b for b in blocks if b["name"] == "atft-run-ended-badly"]
        assert hook_url not in json.dumps(block) and block["data"]["url"] == "{{webhook_url}}"
        automations = httpx.post(f"{api}/automations/filter", json={}, auth=AUTH, timeout=10).json()
        assert hook_url not in json.dumps(automations)
        assert {a["name"] for a in automations} == {"atft run ended badly", "atft silent run crashed"}

        # Pools are created once: an operator's edit of a pool's job template survives the next `make up`.
        job = _get(f"{api}/work_pools/gpu").json()["base_job_template"]
        job["variables"]["properties"]["env"]["default"] = {"OPERATOR_SET": "1"}
        httpx.patch(f"{api}/work_pools/gpu", json={"base_job_template": job}, auth=AUTH, timeout=10).raise_for_status()
        again = subprocess.run(["bash", str(STACK), "up"], env=env, cwd=REPO, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "work pool 'gpu' exists (left as it is)" in again.stdout
        job = _get(f"{api}/work_pools/gpu").json()["base_job_template"]
        assert job["variables"]["properties"]["env"]["default"] == {"OPERATOR_SET": "1"}
    finally:
        down = subprocess.run(["bash", str(STACK), "down"], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not list(home.glob("*.pid"))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api}/health", timeout=2)
