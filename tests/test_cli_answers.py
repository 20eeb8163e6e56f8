"""A failed gate or a bad input is an answer, not a crash: each case through the real `atft` CLI
(a subprocess, no Prefect server set, as a new user runs it): the exit code, one `error:` message
saying what to do, and no Python traceback anywhere in the output.

The checks before the flow (flags, config ranges, data path, device) answer in about a second;
the two cases that need the flow (an S3 bucket that does not exist, a failing gate) start Prefect's
throwaway local server, like `atft dryrun` does on a fresh machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prefect_fixtures import FAKE_KEY_ID, FAKE_SECRET, TINY_CONFIG_YAML

REPO = Path(__file__).resolve().parents[1]


def atft(args: list[str], tmp: Path, env: dict[str, str] | None = None, timeout: float = 240):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "ATFT_", "AWS_"))}
    base.update(PREFECT_HOME=str(tmp / "prefect-home"), ATFT_HOME=str(tmp / "atft-home"), OMP_NUM_THREADS="1",
                **(env or {}))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp, env=base, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_answer(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    if code == 2:
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, proc.stderr[-3000:]
    for w in words:
        assert w in out, f"{w!r} not in {out[-3000:]}"


@pytest.mark.parametrize("flags, config, words", [
    (["--max-epochs", "0"], None, ["--max-epochs", "integer >= 1"]),
    (["--max-epochs", "-1"], None, ["--max-epochs", "integer >= 1"]),
    ([], "data: {window: 0}\n", ["data.window = 0", "integer >= 1", "--config"]),
    ([], "train: {lr: -1}\n", ["train.lr = -1", "number > 0"]),
    ([], "train: {max_epochs: 0}\ngate: {min_gpu_util: 1.5}\n",
     ["2 problems", "train.max_epochs", "gate.min_gpu_util"]),
    (["--min-gpu-util", "2"], None, ["--min-gpu-util", "[0, 1]"]),
], ids=["max-epochs-0", "max-epochs-negative", "window-0", "lr-negative", "two-problems", "min-gpu-util"])
def test_bad_flag_or_config_exits_2_before_anything_runs(tmp_path, tiny_demo, flags, config, words):
    args = ["dryrun", "--data-path", str(tiny_demo), "--output-dir", "runs", "--cache-dir", "cache", *flags]
    if config:
        (tmp_path / "c.yaml").write_text(config)
        args += ["--config", "c.yaml"]
    proc = atft(args, tmp_path)
    assert_one_answer(proc, 2, *words)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing half-written
    assert "temporary server" not in proc.stdout + proc.stderr  # failed before any flow started


@pytest.mark.parametrize("command", [["pipeline", "--mode", "hpo"], ["hpo"]])
def test_a_literal_password_in_the_storage_url_exits_2_before_anything_runs(tmp_path, tiny_demo, command):
    """It would travel as a parameter of every worker run (the UI, the database): `${VAR}` or nothing."""
    proc = atft([*command, "--data-path", str(tiny_demo), "--storage", "postgresql+psycopg2://optuna:hunter2@db/optuna"],
                tmp_path)
    assert_one_answer(proc, 2, "literal password", "${OPTUNA_DB_PASSWORD}")
    assert "hunter2" not in proc.stdout + proc.stderr
    assert not (tmp_path / "atft-home").exists() and "temporary server" not in proc.stdout + proc.stderr


def test_paths_typed_are_relative_to_the_current_folder_and_left_out_ones_under_the_work_root(tmp_path, tiny_demo):
    """`--output-dir runs` lands in ./runs; the cache, given no path, under ATFT_HOME; nothing anywhere else."""
    shutil.copy(tiny_demo, tmp_path / "panel.parquet")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG_YAML)
    proc = atft(["dryrun", "--data-path", "panel.parquet", "--config", "tiny.yaml", "--output-dir", "runs",
                 "--max-epochs", "1", "--min-rankic", "-1"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run] = list((tmp_path / "runs").iterdir())
    assert f"run folder: {run}" in proc.stdout
    [cache] = list((tmp_path / "atft-home" / "cache").iterdir())
    assert json.loads((run / "stage.json").read_text())["cache_path"] == str(cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atft-home", "panel.parquet", "prefect-home", "runs",
                                                          "tiny.yaml"]


def test_device_cuda_without_a_gpu_exits_2(tmp_path, tiny_demo):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the case is the same on a GPU machine.
    proc = atft(["dryrun", "--data-path", str(tiny_demo), "--device", "cuda", "--output-dir", "runs"], tmp_path,
                env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_answer(proc, 2, "no CUDA GPU is visible", "--device auto")


def test_missing_data_file_exits_2(tmp_path):
    proc = atft(["dryrun", "--data-path", "nowhere.parquet", "--output-dir", "runs"], tmp_path)
    assert_one_answer(proc, 2, "nowhere.parquet", "does not exist", "--data-path")
    assert not (tmp_path / "runs").exists()


def test_s3_bucket_that_does_not_exist_exits_2_without_retrying(prefect_harness, tmp_path, tiny_config, s3_endpoint):
    from prefect.settings import PREFECT_API_URL

    # Against the session's test server (saves a second temporary-server start; the output is the same).
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = atft(["dryrun", "--data-path", "s3://no-such-bucket-atft/panel.parquet", "--config", str(tiny_config),
                 "--output-dir", "runs", "--cache-dir", "cache"], tmp_path, env=env)
    assert_one_answer(proc, 2, "s3://no-such-bucket-atft/panel.parquet", "NoSuchBucket", "bucket name")
    out = proc.stdout + proc.stderr
    assert "Retry" not in out  # a missing bucket is permanent: no 10 s + 60 s of retries
    assert "computing cache key" not in out
    assert FAKE_SECRET not in out and FAKE_KEY_ID not in out


def test_failing_gate_exits_1_with_the_gate_table_and_no_traceback(tmp_path, tiny_demo, tiny_config):
    proc = atft(["dryrun", "--data-path", str(tiny_demo), "--config", str(tiny_config), "--max-epochs", "1",
                 "--min-rankic", "0.99", "--output-dir", "runs", "--cache-dir", "cache"], tmp_path)
    assert_one_answer(proc, 1, "FAIL val_rankic", "gate: FAILED")
    assert "dryrun-" in proc.stdout + proc.stderr  # the flow run is named for what it is
    [run] = list((tmp_path / "runs").iterdir())
    assert (run / "gate.json").is_file() and (run / "plots" / "training.png").is_file()
