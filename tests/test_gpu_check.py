"""`make gpu-check` on a CPU host: small sizes, one JSON, no orchestration imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out", str(out),
                        "--work-dir", str(tmp_path / "work"), "--wheels", str(tmp_path / "no-wheels")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["forbidden_imports"] == []  # no Prefect / Optuna / boto3 / Postgres
    assert r["wheels"]["installed"] == []  # this interpreter has everything
    by = {b["path"]: b for b in r["bench"]}
    assert set(by) == {"eager", "static"}
    for b in by.values():
        assert b["host_syncs_per_step_between_reads"] == 0.0 and b["host_syncs_counted"] == 1, b
        assert b["days_per_s"] > 0 and b["step_ms"] > 0 and b["timed_days"] == 12
    assert by["static"]["static_shapes"] is True and by["eager"]["static_shapes"] is False
    d = r["dryrun"]
    assert d["gate_passed"] is True and d["gate_gpu_criterion"] is None and "trainer ran on cpu" in d["gate_gpu_note"]
    assert d["train_days_per_epoch"] > 0 and d["epoch_seconds"] > 0
    mem = r["reference_memory_estimate"]
    assert 18e6 < mem["params"] < 23e6 and mem["total_mb_estimate"] > mem["weights_grads_adam_mb"] > 0


def test_missing_module_without_a_wheel_is_one_clear_error(tmp_path, monkeypatch):
    from bench import gpu_check

    monkeypatch.setattr(gpu_check, "WHEELS", {"atft_surely_absent_module": ("atft_surely_absent-",)})
    with pytest.raises(SystemExit, match=r"lacks \['atft_surely_absent_module'\].*make gpu-wheels"):
        gpu_check.install_missing(tmp_path, tmp_path / "site")
