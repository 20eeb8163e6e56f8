"""The user's path, word for word: the stack as `make up` starts it, then the README's deployment runs.

No test here passes a path: the deployments run with their defaults, so every flow run works in the
throwaway folder the process worker makes (prefect.yaml's git_clone pull step clones into it) and
must put everything it makes under the work root (ATFT_HOME). This host has no GPU, so the stack is
started as the README says for one: `GPU_WORKERS=cpu-dev make up`, and runs pass `require_gpu=false`.

One stack for the module (its start and the demo's first cache build are paid once), in order:
1. the README's dry run, while a nightly started at the same moment queues behind the one (busy) gpu
   worker past its start deadline: both complete, nothing is cancelled, and the run folder the
   artifact names is still there after the run ended;
2. a second nightly continues the same study (2 + 2 trials in one study under the work root);
3. the gpu worker is killed mid-training: its run is marked Crashed by the heartbeat automation,
   the pipeline fails with a `dryrun-gate` artifact that says why, and the alert fires.

Workers poll every 2 s and a run silent for 90 s is taken for dead (runs send a heartbeat every 30 s) to
keep the module in minutes; those are knobs of the stack, not of the runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import optuna
import pytest

from tests.prefect_fixtures import free_port
from tests.test_e2e_prefect import _Receiver, _wait_for  # noqa: F401 (the webhook receiver)

REPO = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
CRASH_AFTER_S = 90  # silent this long = Crashed (runs send a heartbeat every 30 s)

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, tmp: Path, hook_url: str):
        self.home = tmp / "prefect-home"
        self.work_root = tmp / "atft-home"
        self.cwd = tmp / "user"  # where the user types the commands: not the checkout
        self.cwd.mkdir()
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PREFECT_", "ATFT_", "GPU_WORKERS", "MAKE", "MFLAGS"))}
        self.env = {**base, "PREFECT_HOME": str(self.home), "ATFT_PREFECT_PORT": str(self.port),
                    "ATFT_HOME": str(self.work_root), "ATFT_ALERT_WEBHOOK_URL": hook_url,
                    "ATFT_CRASH_AFTER_S": str(CRASH_AFTER_S), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        self.client_env = {**self.env, "PREFECT_API_URL": self.api}

    def make(self, target: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-C", str(REPO), target], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=300)

    def prefect(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(PREFECT), *args], env=self.client_env, cwd=self.cwd, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(PREFECT), *args], env=self.client_env, cwd=self.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def post(self, path: str, body: dict) -> list[dict]:
        return httpx.post(f"{self.api}{path}", json=body, timeout=10).raise_for_status().json()

    def runs(self, **filters) -> list[dict]:
        return self.post("/flow_runs/filter", {"limit": 100, "sort": "START_TIME_ASC", **filters})

    def deployment_runs(self, name: str) -> list[dict]:
        dep = httpx.get(f"{self.api}/deployments/name/{name}", timeout=10).raise_for_status().json()
        return self.runs(deployments={"id": {"any_": [dep["id"]]}})

    def artifact(self, key: str, flow_run_id: str) -> dict:
        [art] = self.post("/artifacts/filter", {"artifacts": {"key": {"any_": [key]},
                                                              "flow_run_id": {"any_": [flow_run_id]}}})
        return art

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("*.log")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import threading
    from http.server import ThreadingHTTPServer

    _Receiver.posts = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    s = Stack(tmp_path_factory.mktemp("users-path"), f"http://127.0.0.1:{hook.server_address[1]}/hook")
    try:
        up = s.make("up")  # this host has no GPU: no gpu worker unless asked for
        assert up.returncode == 0, up.stdout + up.stderr
        assert "no gpu worker started here" in up.stdout and not list(s.home.glob("worker-gpu*.pid"))
        up = s.make("up", GPU_WORKERS="cpu-dev")  # the README's command for a host without a GPU
        assert up.returncode == 0, up.stdout + up.stderr
        assert "GPU_WORKERS=cpu-dev" in up.stdout and "server already running" in up.stdout
        assert (s.home / "worker-gpu-cpu-dev.pid").is_file()
        yield s
    finally:
        down = s.make("down")
        hook.shutdown()
        assert down.returncode == 0, down.stdout + down.stderr


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        out += children
        frontier = children
    return out


def _pipeline_result(stack: Stack, run: dict) -> Path:
    """The run folder the `run-folder` artifact names (a file:// link)."""
    link = stack.artifact("run-folder", run["id"])["data"]  # markdown: [name](file:///...)
    uri = re.search(r"\((file:[^)]+)\)", link).group(1)
    return Path(unquote(urlsplit(uri).path))


@pytest.mark.timeout(1800)  # six trainings of the demo, one after the other on the one gpu worker
def test_readme_dryrun_completes_while_a_nightly_queues_behind_the_busy_gpu_worker(stack):
    readme = ["deployment", "run", "atft/dryrun", "-p", "require_gpu=false", "--watch"]
    dryrun = stack.start(*readme)
    # Started a moment later, the nightly's gpu stage waits for the one gpu worker far past its start
    # deadline: the worker is alive, so it is queued, not lost.
    time.sleep(3)
    nightly = stack.start("deployment", "run", "atft/nightly-hpo", "-p", "n_trials=2", "-p", "max_epochs=1",
                          "-p", "hpo_max_epochs=1", "-p", "challenger_ensemble=1", "-p", "challenger_epochs=1",
                          "-p", "require_gpu=false", "-p", "gpu_start_timeout_s=5", "--watch")
    out = {}
    for name, proc in (("dryrun", dryrun), ("nightly", nightly)):
        out[name] = proc.communicate(timeout=1500)[0]
        assert proc.returncode == 0, f"{name}:\n{out[name][-3000:]}\n{stack.logs()}"

    assert not stack.runs(flow_runs={"state": {"type": {"any_": ["CANCELLED", "CANCELLING", "FAILED", "CRASHED"]}}})
    [run] = stack.deployment_runs("atft/dryrun")
    assert run["state_type"] == "COMPLETED" and run["work_pool_name"] == "cpu"
    folder = _pipeline_result(stack, run)
    # The folder outlived the run, under the work root, with everything a person reads.
    assert folder.parent == stack.work_root / "runs" and folder.name.endswith(run["id"][:8])
    assert {"run.json", "stage.json", "gate.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "gate.json").read_text())["passed"] is True
    assert "Dry-run gate: PASSED" in stack.artifact("dryrun-gate", run["id"])["data"]
    provenance = json.loads((folder / "run.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert provenance["code"]["commit"] == head  # the worker's clone of this branch
    assert provenance["versions"]["torch"] and provenance["versions"]["optuna"]
    assert provenance["parameters"]["work_root"] == str(stack.work_root)
    # The gpu stage (another flow run, another throwaway folder) trained on the same cache by its absolute path.
    stage = json.loads((folder / "stage.json").read_text())
    assert Path(stage["cache_path"]).parent == stack.work_root / "cache"
    assert (stack.work_root / "demo" / "demo-prices.parquet").is_file()
    # Nothing was made in the checkout (the workers cloned it) or where the user typed the commands.
    untracked = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all", "--",
                                "runs", "data", "optuna.db"], capture_output=True, text=True).stdout
    assert untracked == "" and list(stack.cwd.iterdir()) == []
    assert _Receiver.posts == []  # nothing ended badly


@pytest.mark.timeout(1200)
def test_a_second_nightly_continues_the_same_study(stack):
    nightly = stack.prefect("deployment", "run", "atft/nightly-hpo", "-p", "n_trials=2", "-p", "max_epochs=1",
                            "-p", "hpo_max_epochs=1", "-p", "challenger_ensemble=1", "-p", "challenger_epochs=1",
                            "-p", "require_gpu=false", "--watch")
    assert nightly.returncode == 0, nightly.stdout[-3000:] + stack.logs()
    # Not the cron's: its 02:00 JST run can fall due while the test runs (17:00 UTC), and it is then
    # rightly cancelled by the one-nightly-at-a-time limit, or still waits in Scheduled.
    runs = [r for r in stack.deployment_runs("atft/nightly-hpo") if not r["auto_scheduled"]]
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    [db] = list((stack.work_root / "studies").glob("*.db"))
    [summary] = optuna.get_all_study_summaries(f"sqlite:///{db}")
    assert summary.study_name == "atft" and summary.n_trials == 4
    for run in runs:
        folder = _pipeline_result(stack, run)
        assert json.loads((folder / "hpo.json").read_text())["storage"] == f"sqlite:///{db}"
        # The nightly's last step: retention under the work root (nothing old to remove yet, all kept).
        assert "## Retention" in stack.artifact("retention", run["id"])["data"]
        # The night's product: a champion decision on its challenger, and the live health.
        assert "## Champion decision" in stack.artifact("champion-decision", run["id"])["data"]
        assert "## Live health" in stack.artifact("live-health", run["id"])["data"]
        assert json.loads((folder / "decision.json").read_text())["night"] == json.loads(
            (folder / "gate.json").read_text())["dataset"]["last_date"]
    # Both nightlies (the first test's and this one) ran on the same demo panel: the same night, so one
    # decision each and at most one champion change.
    log = (stack.work_root / "registry" / "decisions.jsonl").read_text()
    decisions = [json.loads(line) for line in log.splitlines()]
    assert [d["how"] for d in decisions] == ["nightly", "nightly"] and len({d["night"] for d in decisions}) == 1
    assert sum(d["promoted"] for d in decisions) <= 1


def test_a_killed_gpu_worker_ends_its_run_crashed_and_the_alert_fires(stack):
    t0 = time.monotonic()
    started = stack.prefect("deployment", "run", "atft/dryrun", "-p", "require_gpu=false", timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    [pipeline] = [r for r in stack.deployment_runs("atft/dryrun") if r["state_type"] != "COMPLETED"]
    stage = _wait_for("the gpu stage to train", lambda: [
        r for r in stack.runs(flows={"name": {"any_": ["atft-gpu-stage"]}},
                              flow_runs={"state": {"type": {"any_": ["RUNNING"]}}})], timeout=300, every=2)[0]
    time.sleep(10)  # well into training
    # The host "dies": the worker and every process below it (Prefect starts each flow run in its own
    # session, so the worker's process group alone would leave the training running).
    worker = int((stack.home / "worker-gpu-cpu-dev.pid").read_text())
    for pid in [worker, *_descendants(worker)]:
        os.kill(pid, signal.SIGKILL)

    def ended(run_id: str):
        run = httpx.get(f"{stack.api}/flow_runs/{run_id}", timeout=10).json()
        return run if run["state_type"] in ("CRASHED", "FAILED", "COMPLETED", "CANCELLED") else None

    stage = _wait_for("the silent stage to be marked Crashed", lambda: ended(stage["id"]),
                      timeout=CRASH_AFTER_S + 150, every=3)
    assert stage["state_type"] == "CRASHED" and "no heartbeat" in stage["state"]["message"], stage["state"]
    pipeline = _wait_for("the pipeline to fail", lambda: ended(pipeline["id"]), timeout=120, every=3)
    assert pipeline["state_type"] == "FAILED"
    gate = stack.artifact("dryrun-gate", pipeline["id"])["data"]
    assert "FAILED (no verdict)" in gate and "Crashed" in gate
    about = lambda: [p for p in _Receiver.posts if pipeline["name"] in p["subject"]]  # noqa: E731
    alerts = _wait_for("the alert", about, timeout=90)
    # The run's one bad ending; a busy server may deliver that notification twice, never another one.
    for alert in alerts:
        assert "ended Failed" in alert["subject"] and "Crashed" in alert["body"], (alert, _Receiver.posts)
    print(f"killed worker noticed and alerted in {time.monotonic() - t0:.0f}s")
