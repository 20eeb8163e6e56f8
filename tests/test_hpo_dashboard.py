"""optuna-dashboard, a project dependency: the command `atft hpo` prints runs as printed, serves the
study's storage on loopback, and the study reads back over its HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from atft_core.config import AtftConfig
from atft_core.hpo.study import run_study
from tests.prefect_fixtures import free_port
from tests.test_hpo import SPACE, hpo, planted


def _get_json(url: str, deadline: float, proc: subprocess.Popen) -> dict:
    """GET `url` as JSON, retrying until the server answers or `deadline` (monotonic) passes."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, f"optuna-dashboard exited with code {proc.returncode}"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_printed_dashboard_command_serves_the_study_over_http(tmp_path, storage):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    url = None if storage == "sqlite" else f"journal:{tmp_path}/study/optuna.log"
    s = run_study("unused", AtftConfig(), hpo(str(space), n_trials=3, max_epochs=1, pruner="none",
                                                 study_name="dash", storage=url), tmp_path / "out", score=planted)
    assert s.dashboard.startswith("optuna-dashboard ")
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # The command exactly as hpo.json prints it, run by a shell, plus where to listen.
    proc = subprocess.Popen(["bash", "-c", f"exec {s.dashboard} --host 127.0.0.1 --port {port} --quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 60
        studies = _get_json(f"{base}/studies", deadline, proc)["study_summaries"]
        assert [st["study_name"] for st in studies] == ["dash"]
        detail = _get_json(f"{base}/studies/{studies[0]['study_id']}", deadline, proc)
        assert len(detail["trials"]) == 3 and all(t["state"] == "Complete" for t in detail["trials"])
        best = max(t["values"][0] for t in detail["trials"])
        assert best == pytest.approx(s.best_value)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
