"""A journal-file study has no heartbeat, but its workers share one host: a killed worker's trial is
failed and retried (once this host sees its process is gone), a live worker's trial is left alone.

Real worker processes (spawned, SIGKILLed mid-trial), a real journal file, real /proc: no mocks.
"""

from __future__ import annotations

import dataclasses
import datetime
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from atft_core.config import AtftConfig
from atft_core.hpo.config import FAIL_REASON_ATTR, PROCESS_ATTR, HpoConfig
from atft_core.hpo.liveness import RECORD_GRACE_S, is_alive, process_record, this_process
from atft_core.hpo.objective import report_epoch
from atft_core.hpo.report import trial_rows
from atft_core.hpo.study import prepare_study
from atft_core.hpo.worker import run_worker

# _quiet_optuna: autouse, as in test_hpo
from tests.test_hpo import SPACE, _quiet_optuna, hpo, load, planted, planted_value, states  # noqa: F401


@pytest.fixture
def space(tmp_path) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return str(path)


def gated_planted(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    """planted, but after its first epoch it waits for the file $ATFT_TEST_GATE: a worker held mid-trial."""
    value, gate, deadline = planted_value(cfg), Path(os.environ["ATFT_TEST_GATE"]), time.monotonic() + 120
    report_epoch(trial, 0, value, cfg.train.max_epochs)
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for epoch in range(1, cfg.train.max_epochs):
        report_epoch(trial, epoch, value, cfg.train.max_epochs)
    return value


def _journal_worker(url: str, cfg: HpoConfig, n_trials: int | None) -> None:  # a spawned worker process
    run_worker("unused", AtftConfig(), cfg, storage_url=url, n_trials=n_trials, score=gated_planted)


def _start_held_worker(url: str, cfg: HpoConfig, gate: Path, trial: int, n_trials: int | None = 1):
    """A worker process held mid-trial (its first epoch reported) on trial number `trial` until `gate` exists."""
    os.environ["ATFT_TEST_GATE"] = str(gate)  # a spawned process copies the environment as it starts
    proc = multiprocessing.get_context("spawn").Process(target=_journal_worker, args=(url, cfg, n_trials))
    proc.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.is_alive(), "the worker exited before it got mid-trial"
        trials = load(url).trials
        if len(trials) > trial and trials[trial].state == TrialState.RUNNING and trials[trial].intermediate_values:
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the worker never got mid-trial on trial {trial}")


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)


def test_journal_worker_killed_mid_trial_is_failed_and_retried(tmp_path, space, monkeypatch, caplog):
    monkeypatch.setenv("ATFT_TEST_GATE", "unset")  # restored after the test; the helpers set it per process
    cfg = hpo(space, n_trials=3, max_epochs=3, pruner="none")
    url = f"journal:{tmp_path}/optuna.log"
    prepare_study(cfg, url)  # trials 0, 1, 2
    run_worker("unused", AtftConfig(), cfg, storage_url=url, n_trials=1, score=planted)  # trial 0 done
    victim = _start_held_worker(url, cfg, tmp_path / "never", trial=1)
    live = _start_held_worker(url, cfg, tmp_path / "open-later", trial=2)
    try:
        _kill(victim)
        assert load(url).trials[1].state == TrialState.RUNNING  # no heartbeat: nothing has ended it yet
        # The next batch is queued at once: no grace period to wait, this host knows the victim is gone.
        with caplog.at_level("WARNING", logger="atft_core.hpo.liveness"):
            batch = prepare_study(dataclasses.replace(cfg, n_trials=1), url)
        study = load(url)
        dead = study.trials[1]
        assert dead.state == TrialState.FAIL and dead.user_attrs["fail_kind"] == "worker_stopped"
        host = dead.user_attrs[PROCESS_ATTR]["host"]
        assert dead.user_attrs[FAIL_REASON_ATTR] == f"its worker stopped (process {victim.pid} on {host} is gone)"
        assert "trial 1 marked FAIL: its worker stopped" in caplog.text and "retry queued" in caplog.text
        assert study.trials[2].state == TrialState.RUNNING  # a live worker's trial is left alone
        assert study.trials[0].state == TrialState.COMPLETE
        retry = study.trials[3]  # queued ahead of the new batch's trial 4
        assert retry.state == TrialState.WAITING and retry.params == dead.params
        assert retry.system_attrs["failed_trial"] == 1 and retry.system_attrs["retry_history"] == [1]
        assert not {FAIL_REASON_ATTR, PROCESS_ATTR, "worker"} & set(retry.user_attrs)  # the next attempt's own
        assert (batch.first_number, batch.queued) == (4, 2)
        (tmp_path / "open-later").touch()
        live.join(timeout=60)
        assert live.exitcode == 0
    finally:
        for proc in (victim, live):
            if proc.is_alive():
                proc.kill()

    report = run_worker("unused", AtftConfig(), cfg, storage_url=url, worker_index=2, score=planted)
    assert [t["number"] for t in report.trials] == [3, 4]  # the retry first, then the new batch's trial
    study = load(url)
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}  # 3 + 1 queued trials done, plus the killed attempt
    assert study.trials[3].state == TrialState.COMPLETE and study.trials[3].params == study.trials[1].params
    assert len(study.trials[2].intermediate_values) == 3  # the live worker finished its trial
    rows = trial_rows(study)
    assert rows[1]["fail_reason"].startswith("its worker stopped (process")
    assert rows[1]["fail_reason"].endswith("; retried as trial 3") and rows[3]["retry_of"] == 1


def test_journal_worker_start_ends_a_dead_workers_trial_and_max_retry_bounds_its_retries(tmp_path, space,
                                                                                         monkeypatch):
    """No prepare in between: the next worker ends the trial as it starts, and runs its retry. A retry whose
    worker dies too is not retried again (max_retry=1): a trial that kills its worker stops."""
    monkeypatch.setenv("ATFT_TEST_GATE", "unset")
    cfg = hpo(space, n_trials=1, max_epochs=3, pruner="none", max_retry=1)
    url = f"journal:{tmp_path}/optuna.log"
    prepare_study(cfg, url)
    _kill(_start_held_worker(url, cfg, tmp_path / "never", trial=0, n_trials=None))
    # This worker ends trial 0 as it starts, counts the retry (trial 1) as queued and runs it: killed too.
    _kill(_start_held_worker(url, cfg, tmp_path / "never", trial=1, n_trials=None))
    study = load(url)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    report = run_worker("unused", AtftConfig(), cfg, storage_url=url, score=planted)
    study = load(url)
    assert report.trials == [] and states(study) == {"FAIL": 2}  # nothing left to run
    assert study.trials[1].system_attrs["retry_history"] == [0]
    assert study.trials[1].user_attrs[FAIL_REASON_ATTR].endswith("not retried: its parameters already had "
                                                                 "max_retry=1 retries")
    rows = trial_rows(study)
    assert rows[0]["fail_reason"].endswith("; retried as trial 1") and "retried as" not in rows[1]["fail_reason"]


def test_process_record_tells_a_dead_zombie_or_reused_pid_from_a_live_process():
    me = this_process()
    assert is_alive(me) is True
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = process_record(child.pid)
        assert is_alive(record) is True
        child.kill()
        deadline = time.monotonic() + 10
        while is_alive(record) and time.monotonic() < deadline:  # killed, never reaped: a zombie is no worker
            time.sleep(0.05)
        assert is_alive(record) is False and Path(f"/proc/{child.pid}").exists()
    finally:
        child.kill()
        child.wait()
    assert is_alive(record) is False
    assert is_alive({**me, "start": me["start"] - 1}) is False  # a live pid, but another process's start time
    assert is_alive({**me, "boot": "another-boot"}) is False  # the host restarted since
    assert is_alive({**me, "host": "elsewhere"}) is None  # this host cannot tell: left RUNNING


def test_running_trials_this_host_cannot_judge_are_left_running_with_a_warning(tmp_path, space, caplog):
    """Another host's worker, or a trial without a record that is older than the grace: warned, never failed."""
    cfg = hpo(space, n_trials=0)
    url = f"journal:{tmp_path}/optuna.log"
    prepare_study(cfg, url)
    study = load(url)
    elsewhere = study.ask()
    elsewhere.set_user_attr(PROCESS_ATTR, {**this_process(), "host": "gpu-host-2"})
    just_claimed = study.ask()  # no record yet: within the grace, not even a warning
    old = datetime.datetime.now() - datetime.timedelta(seconds=RECORD_GRACE_S + 60)
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=old, datetime_complete=None, params={},
        distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=0))
    with caplog.at_level("WARNING", logger="atft_core.hpo.liveness"):
        prepare_study(cfg, url)
    assert [t.state for t in load(url).trials] == [TrialState.RUNNING] * 3
    assert "trial 0 is RUNNING on host gpu-host-2" in caplog.text and "use PostgreSQL" in caplog.text
    assert f"trial {just_claimed.number} is RUNNING" not in caplog.text
    assert "trial 2 is RUNNING without a record" in caplog.text and "study.tell(2, state=" in caplog.text
