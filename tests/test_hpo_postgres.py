"""HPO on PostgreSQL, the storage for workers on several hosts: a private server started from the
machine's PostgreSQL binaries (initdb + pg_ctl on a free loopback port, password authentication),
two worker processes on one study, the password kept out of every file the run writes, and the
pipeline's HPO stage fanning out runs of the worker deployment on the `gpu` pool.

Never skipped: without the binaries the test fails with what to install. `make test` (and so
`.ci/run`) installs them first (`make postgres`, Debian/Ubuntu package `postgresql-15`) and stops
loudly when it cannot; ATFT_PG_BIN names their folder when it is not the usual one.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from atft_core.config import AtftConfig
from atft_core.hpo.config import HpoConfig
from atft_core.hpo.storage import build_storage
from atft_core.hpo.study import run_study
from tests.prefect_fixtures import free_port
from tests.test_hpo import SPACE, slow_planted, tiny_cache, tiny_train_cfg  # noqa: F401,F811 (fixtures)

PASSWORD_ENV = "ATFT_TEST_PG_PASSWORD"


def _pg_bindir() -> Path | None:
    if os.environ.get("ATFT_PG_BIN") and (Path(os.environ["ATFT_PG_BIN"]) / "initdb").is_file():
        return Path(os.environ["ATFT_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)  # newest version first
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the `postgres` system user then.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[tuple[str, str]]:
    """(URL with a ${VAR} password placeholder, the password) of a throwaway PostgreSQL server."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: run `make postgres` (package "
                    "postgresql-15) or set ATFT_PG_BIN to their folder")
    root = Path(tempfile.mkdtemp(prefix="atft-pg-"))
    password = "pw-" + secrets.token_hex(12)
    (root / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pw", "postgres", "postgres")
    port = free_port()
    data, log = root / "data", root / "server.log"
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                                 f"--pwfile={root / 'pw'}", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60",
                                 "start"]), check=True, capture_output=True, timeout=90)
    try:
        yield f"postgresql+psycopg2://postgres:${{{PASSWORD_ENV}}}@127.0.0.1:{port}/postgres", password
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study_and_the_password_stays_out_of_files(postgres_url, tmp_path, monkeypatch):
    url, password = postgres_url
    monkeypatch.setenv(PASSWORD_ENV, password)  # each worker fills the placeholder from its environment
    monkeypatch.setenv("ATFT_TEST_EPOCH_S", "0.4")  # 0.8 s per trial: both workers are up before the queue is empty
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    cfg = HpoConfig(n_trials=6, parallel=2, max_epochs=2, pruner="none", study_name="pg", storage=url,
                    search_space=str(space),
                    heartbeat_interval_s=1, grace_period_s=3)
    out = tmp_path / "out"
    s = run_study("unused", AtftConfig(), cfg, out, score=slow_planted)

    study = optuna.load_study(study_name="pg", storage=build_storage(url, cfg))
    assert sorted(t.number for t in study.trials) == list(range(6))  # exactly the total, unique numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    reports = [json.loads(p.read_text()) for p in sorted((out / "workers").glob("worker-*.json"))]
    assert sorted(t["number"] for r in reports for t in r["trials"]) == list(range(6))  # each ran exactly once
    assert len(reports) == 2 and all(r["trials"] for r in reports)
    assert s.counts["complete"] == 6 and s.best_value == max(t.value for t in study.trials)

    # A rerun continues the study on the server.
    again = run_study("unused", AtftConfig(), HpoConfig(**{**cfg.to_dict(), "n_trials": 2, "parallel": 1}), out,
                      score=slow_planted)
    assert again.study_counts["total"] == 8 and again.counts["total"] == 2

    report = json.loads((out / "hpo.json").read_text())
    assert report["storage"] == f"postgresql+psycopg2://postgres:***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    for path in out.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), f"{path} contains the database password"


@pytest.mark.slow
def test_hpo_stage_fans_out_worker_runs_on_the_gpu_pool(postgres_url, tmp_path, tiny_cache, tiny_train_cfg,  # noqa: F811
                                                       prefect_harness, monkeypatch):
    """Under a deployment the stage starts K runs of atft-hpo-worker/gpu on a PostgreSQL study; a real
    process worker on pool `gpu` runs them; together they run exactly the trials queued."""
    import subprocess
    import sys

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.hpo_stage import HPO_WORKER_DEPLOYMENT, hpo_worker_flow, run_hpo_stage
    from tasks.cache import CacheRef

    url, password = postgres_url
    monkeypatch.setenv(PASSWORD_ENV, password)  # the gpu worker's runs fill the placeholder from this
    repo = Path(__file__).resolve().parents[1]
    prefect_bin = str(Path(sys.executable).with_name("prefect"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    subprocess.run([prefect_bin, "--no-prompt", "work-pool", "create", "gpu", "--type", "process", "--overwrite"],
                   env=env, check=True, capture_output=True, timeout=120)
    hpo_worker_flow.from_source(source=str(repo), entrypoint="flows/hpo_stage.py:hpo_worker_flow").deploy(
        name=HPO_WORKER_DEPLOYMENT.split("/")[1], work_pool_name="gpu", print_next_steps=False)
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    cfg = dataclasses.replace(tiny_train_cfg, train=dataclasses.replace(tiny_train_cfg.train, max_epochs=1,
                                                                         max_train_days=4))
    out = tmp_path / "run"

    @flow(name="hpo-fan-out-test")
    def parent() -> dict:
        return run_hpo_stage(cache=CacheRef(str(tiny_cache), True, "", {}), run_dir=out, config=cfg, n_trials=3,
                             study_name="pool",
                             storage=url, workers=2, search_space=str(space), dispatch="deployment")

    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([prefect_bin, "worker", "start", "--pool", "gpu", "--limit", "2"], env=env, cwd=repo,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            summary = parent()
        finally:
            worker.send_signal(signal.SIGINT)
            worker.wait(timeout=60)
    assert summary["counts"]["complete"] == 3 and summary["study_counts"]["total"] == 3
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.name.startswith(f"hpo-{out.name}-w")]
    assert sorted(r.name for r in runs) == [f"hpo-{out.name}-w0", f"hpo-{out.name}-w1"]
    assert all(r.work_pool_name == "gpu" and r.state.is_completed() for r in runs)
    reports = [json.loads((out / "workers" / f"worker-{i}.json").read_text()) for i in (0, 1)]
    assert sorted(t["number"] for r in reports for t in r["trials"]) == [0, 1, 2]
