"""Two hosts on loopback, no shared disk: the project's deployments run on a cpu worker and a gpu worker
that share nothing but the Prefect server (basic auth), a git remote, an S3 bucket and a PostgreSQL study.

Each "host" is a folder with its own PREFECT_HOME and working directory; neither worker has this
checkout on PYTHONPATH: every flow run clones the code from a bare git remote (prefect.yaml's
`git_clone` pull step), built from this working tree as it is now. The cpu worker runs the pipeline,
builds the cache in its folder and shares it through the loopback S3 server (moto); the gpu worker
fetches it into its own work folder, trains there and sends its results back the same way.
`atft/dryrun`, then a 2-trial x 1-epoch `atft/nightly-hpo` on a private PostgreSQL study, both
complete through deployments/prefect.yaml, and their gate artifacts are on the server.

The slowest test of the suite (~3 min on 2 cores: 172 s measured): one server, two workers, four flow runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest

from tests.prefect_fixtures import FAKE_KEY_ID, FAKE_SECRET, free_port
from tests.test_hpo_postgres import PASSWORD_ENV, postgres_url  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
AUTH = ("atft", "pw-" + secrets.token_hex(8))

pytestmark = pytest.mark.slow


def git_remote(tmp: Path) -> Path:
    """A bare repository whose branch `main` holds this working tree as it is (uncommitted edits included)."""
    src = tmp / "src"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():  # a tracked file deleted in the working tree is left out
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    git = ["git", "-C", str(src), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot of the working tree"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(tmp / "atft.git")], check=True)
    shutil.rmtree(src)
    return tmp / "atft.git"


def _api(api: str, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{api}{path}", auth=AUTH, timeout=10, **kw).raise_for_status()


def _runs(api: str, **filters) -> list[dict]:
    return _api(api, "POST", "/flow_runs/filter", json={"limit": 50, **filters}).json()


def _gate(api: str, flow_run_id: str) -> list[dict]:
    return _api(api, "POST", "/artifacts/filter", json={"artifacts": {
        "key": {"any_": ["dryrun-gate"]}, "flow_run_id": {"any_": [flow_run_id]}}}).json()


def _start(cmd: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """TERM the process group (a worker and the flow runs it started), KILL what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def _tails(*logs: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs if log.exists())


def test_dryrun_and_nightly_hpo_on_two_hosts_without_shared_disk(tmp_path, tiny_demo, tiny_config, s3_endpoint,
                                                                 postgres_url):  # noqa: F811
    t0 = time.monotonic()
    db_url, db_password = postgres_url
    remote = git_remote(tmp_path)
    bucket = f"atft-{secrets.token_hex(6)}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id=FAKE_KEY_ID,
                      aws_secret_access_key=FAKE_SECRET)
    s3.create_bucket(Bucket=bucket)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "ATFT_", "AWS_")) and k not in ("PYTHONPATH", PASSWORD_ENV)}
    base.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1")
    client = {**base, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": ":".join(AUTH)}
    hosts = {name: tmp_path / name for name in ("server", "cpu-host", "gpu-host")}
    for folder in hosts.values():
        (folder / "home").mkdir(parents=True)
    # What both workers get from their environment: the server, the bucket and its endpoint, the
    # study's password. Nothing else is shared: each has its own home, folder and work dir.
    worker = {**client, "PREFECT_WORKER_QUERY_SECONDS": "2", "ATFT_ARTIFACT_URI": f"s3://{bucket}/atft",
              "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
              "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_DEFAULT_REGION": "us-east-1", PASSWORD_ENV: db_password}
    cpu_host, gpu_host = hosts["cpu-host"], hosts["gpu-host"]
    data = cpu_host / "data"
    data.mkdir()
    shutil.copy(tiny_demo, data / "demo.parquet")
    shutil.copy(tiny_config, data / "tiny.yaml")

    logs = [hosts[h] / f"{h}.log" for h in hosts]
    procs = [_start([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    {**base, "PREFECT_HOME": str(hosts["server"] / "home"),
                     "PREFECT_SERVER_API_AUTH_STRING": ":".join(AUTH)}, hosts["server"], logs[0])]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the server did not answer within 120 s\n" + _tails(*logs))
        assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).status_code == 401  # no auth, no API

        deploy_env = {**client, "PREFECT_HOME": str(hosts["server"] / "home"), "PREFECT_BIN": str(PREFECT),
                      "ATFT_GIT_REPOSITORY": str(remote), "ATFT_GIT_BRANCH": "main"}
        for cmd in (["bash", "deployments/setup_pools.sh"],
                    [str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"]):
            done = subprocess.run(cmd, env=deploy_env, cwd=REPO, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        dep = {name: _api(api, "GET", f"/deployments/name/{name}").json()
               for name in ("atft/dryrun", "atft/nightly-hpo", "atft-gpu-stage/gpu", "atft-hpo-worker/gpu")}
        for d in dep.values():
            assert d["pull_steps"] == [{"prefect.deployments.steps.git_clone": {"repository": str(remote),
                                                                               "branch": "main"}}]

        procs.append(_start([str(PREFECT), "worker", "start", "--pool", "cpu", "--limit", "4", "--name", "cpu-host"],
                            {**worker, "PREFECT_HOME": str(cpu_host / "home"), "ATFT_HOME": str(cpu_host / "work")},
                            cpu_host, logs[1]))
        procs.append(_start([str(PREFECT), "worker", "start", "--pool", "gpu", "--limit", "1", "--name", "gpu-host"],
                            {**worker, "PREFECT_HOME": str(gpu_host / "home"), "CUDA_VISIBLE_DEVICES": "",
                             "ATFT_WORK_DIR": str(gpu_host / "work")}, gpu_host, logs[2]))

        common = {"data_path": str(data / "demo.parquet"), "config_path": str(data / "tiny.yaml"), "max_epochs": 1,
                  "output_dir": str(cpu_host / "runs"), "cache_dir": str(cpu_host / "cache"),
                  "require_gpu": "false", "device": "cpu",  # CPU here: a gpu host would require its GPU
                  "min_rankic": -1.0,  # one epoch on a tiny panel: the test is about where things run
                  "gpu_start_timeout_s": 300, "gpu_timeout_s": 600}
        nightly = {**common, "n_trials": 2, "hpo_max_epochs": 1, "storage": db_url}  # URL with a ${VAR}
        for name, params in (("atft/dryrun", common), ("atft/nightly-hpo", nightly)):
            cmd = [str(PREFECT), "deployment", "run", name, "--watch", "--watch-timeout", "600"]
            for k, v in params.items():
                cmd += ["-p", f"{k}={v}"]
            run = subprocess.run(cmd, env=client, cwd=tmp_path, capture_output=True, text=True, timeout=660)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + _tails(*logs[1:])

        pipelines = {name: [r for r in _runs(api, deployments={"id": {"any_": [dep[name]["id"]]}},
                                             flow_runs={"state": {"type": {"any_": ["COMPLETED"]}}})
                            if not r["auto_scheduled"]]  # the nightly cron's run can fall due mid-test
                     for name in ("atft/dryrun", "atft/nightly-hpo")}
        assert [len(runs) for runs in pipelines.values()] == [1, 1], pipelines
        stages = _runs(api, deployments={"id": {"any_": [dep["atft-gpu-stage/gpu"]["id"]]}})
        hpo_workers = _runs(api, deployments={"id": {"any_": [dep["atft-hpo-worker/gpu"]["id"]]}})
        # the dry run's, the nightly's gate and the nightly's challenger (the recipe trains where training runs)
        assert [(r["state_type"], r["work_pool_name"]) for r in stages] == [("COMPLETED", "gpu")] * 3
        assert [(r["state_type"], r["work_pool_name"]) for r in hpo_workers] == [("COMPLETED", "gpu")]

        run_dirs = {p.name: p for p in (cpu_host / "runs").iterdir() if p.is_dir()}
        for name, [pipeline] in pipelines.items():
            assert pipeline["work_pool_name"] == "cpu"
            [gate] = _gate(api, pipeline["id"])
            assert "Dry-run gate: PASSED" in gate["data"]
            [run_dir] = [p for n, p in run_dirs.items() if n.endswith(pipeline["id"][:8]) and "-challenger-" not in n]
            run_json = json.loads((run_dir / "run.json").read_text())
            stage = json.loads((run_dir / "stage.json").read_text())  # came back from the gpu host through S3
            # Each side ran a fresh clone of the remote, not this checkout: no PYTHONPATH, no shared code path.
            cpu_code, gpu_code = Path(run_json["code"]["path"]), Path(stage["code"]["path"])
            assert cpu_code.name == gpu_code.name == "atft-main"  # <repo>-<branch>
            assert cpu_code != gpu_code and REPO not in gpu_code.parents
            # Both record the commit they cloned: the remote's branch head.
            head = subprocess.run(["git", "-C", str(remote), "rev-parse", "main"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            assert run_json["code"]["commit"] == stage["code"]["commit"] == head
            # The gpu host trained on its own copy of the cache, in its own copy of the run folder.
            assert Path(stage["cache_path"]).parent == gpu_host / "work" / "cache"
            assert (gpu_host / "work" / "runs" / run_dir.name / "stage.json").is_file()
            assert (run_dir / "gate.json").is_file() and (run_dir / "plots" / "training.png").is_file()
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"atft/{run_dir.name}/")["Contents"]}
            assert {f"atft/{run_dir.name}/stage.json", f"atft/{run_dir.name}/run.json"} <= keys  # the mirror too
            if name == "atft/nightly-hpo":
                report = json.loads((run_dir / "hpo.json").read_text())
                assert report["counts"]["total"] == 2 and report["counts"]["failed"] == 0, report["counts"]
                assert report["storage"].startswith("postgresql+psycopg2://postgres:***@127.0.0.1")
                worker_report = json.loads((run_dir / "workers" / "worker-0.json").read_text())
                assert len(worker_report["trials"]) == 2
                assert (gpu_host / "work" / "runs" / run_dir.name / "workers" / "worker-0.json").is_file()
                # The night: the challenger trained on the gpu host and came back through S3 for the decision.
                decision = json.loads((run_dir / "decision.json").read_text())
                [challenger] = [p for n, p in run_dirs.items() if n.endswith(pipeline["id"][:8]) and p != run_dir]
                assert decision["challenger"] == challenger.name and (challenger / "checkpoint.pt").is_file()
                assert (gpu_host / "work" / "runs" / challenger.name / "checkpoint.pt").is_file()
                assert (cpu_host / "work" / "registry" / "decisions.jsonl").is_file()  # the cpu host's work root
                assert {"atft/registry/decisions.jsonl"} <= {o["Key"] for o in s3.list_objects_v2(
                    Bucket=bucket, Prefix="atft/registry/")["Contents"]}
        caches = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="atft/cache/")["Contents"]}
        [cache_name] = {k.split("/")[2] for k in caches}  # shared once, used by both runs
        assert f"atft/cache/{cache_name}/_exchange.json" in caches
        assert [p.name for p in (gpu_host / "work" / "cache").iterdir()] == [cache_name]
    finally:
        for proc in reversed(procs):
            _stop(proc)
    print(f"two-host test: {time.monotonic() - t0:.0f}s")
