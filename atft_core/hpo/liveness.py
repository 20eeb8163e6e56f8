"""The journal file's heartbeat: is the worker process that runs a trial still alive?

A SQL storage learns that a worker died from its silence (Optuna's heartbeat). A journal file has no
heartbeat, but its workers all run on one host, which can answer directly: each worker records on
every trial it runs which process it is (`this_process`), and `end_dead_workers_trials` fails the
RUNNING trials whose process is gone and queues their retries with the bookkeeping of Optuna's
`RetryHeartbeatStaleTrialCallback` (so `report.trial_rows` explains them like a SQL storage's).

A process is named by host, boot, pid and start time: a pid alone may since belong to another
process, which would make a dead worker look alive for ever. The start time comes from
/proc/<pid>/stat (Linux); elsewhere only the pid is recorded, and a reused pid keeps a trial RUNNING.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from atft_core.hpo.config import FAIL_KIND_ATTR, FAIL_REASON_ATTR, PROCESS_ATTR, WORKER_ATTR

log = logging.getLogger("atft_core.hpo.liveness")

_PROC = Path("/proc")
# Between claiming a trial and recording its process a worker makes one storage call; a trial
# younger than this without a record is most likely in that gap, so it is not worth a warning yet.
RECORD_GRACE_S = 60.0
# Attributes of one attempt: a retry starts without them (another worker writes its own).
_ATTEMPT_ATTRS = (WORKER_ATTR, PROCESS_ATTR, FAIL_KIND_ATTR, FAIL_REASON_ATTR)


def this_process() -> dict[str, Any]:
    """The record a worker writes on each trial it runs (user attribute `worker_process`)."""
    return process_record(os.getpid())


def process_record(pid: int) -> dict[str, Any]:
    """Host, boot, pid and start time of process `pid` of this host."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _start_ticks(pid)}


def is_alive(record: dict[str, Any]) -> bool | None:
    """Whether the recorded process still runs; None when this host cannot tell (another host's process)."""
    if record.get("host") != socket.gethostname():
        return None
    if record.get("boot") != _boot_id():
        return False  # the host restarted since: every process of that boot is gone
    pid = int(record["pid"])
    if record.get("start") is None:  # recorded without /proc: the pid is all there is
        return _pid_exists(pid)
    return _start_ticks(pid) == record["start"]  # None (gone, zombie) or another process's start: dead


def end_dead_workers_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, *,
                            max_retry: int | None) -> list[int]:
    """Fail the study's RUNNING trials whose worker process on this host is gone; queue a retry of each
    (same parameters, at most `max_retry` retries of one original trial). The numbers of the trials failed.

    Another process may end the same trial at the same moment: the storage lets exactly one of them
    fail it, and only that one queues the retry.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    ended = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = trial.user_attrs.get(PROCESS_ATTR)
        alive = is_alive(record) if isinstance(record, dict) else None
        if alive is None:
            _warn_unknown(trial, record)
            continue
        if alive:
            continue
        history = _retry_history(trial)
        retry = max_retry is None or len(history) < max_retry
        reason = f"its worker stopped (process {record['pid']} on {record['host']} is gone)"
        if not retry:
            reason += f"; not retried: its parameters already had max_retry={max_retry} retries"
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, FAIL_KIND_ATTR, "worker_stopped")
            storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process ended it first, and queued its retry
        failed = copy.deepcopy(storage.get_trial(trial_id))
        failed.user_attrs = {k: v for k, v in failed.user_attrs.items() if k not in _ATTEMPT_ATTRS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, failed)
        log.warning("trial %d marked FAIL: %s%s", trial.number, reason, "; retry queued" if retry else "")
        ended.append(trial.number)
    return ended


def _warn_unknown(trial: FrozenTrial, record: Any) -> None:
    if isinstance(record, dict):
        log.warning("trial %d is RUNNING on host %s, whose processes this host (%s) cannot see; it is left "
                    "RUNNING. A journal file serves the workers of one host: for several hosts use PostgreSQL, "
                    "which has a heartbeat", trial.number, record.get("host"), socket.gethostname())
        return
    started = trial.datetime_start or datetime.datetime.now()
    if (datetime.datetime.now() - started).total_seconds() < RECORD_GRACE_S:
        return
    log.warning("trial %d is RUNNING without a record of its worker process (started outside run_worker, or "
                "by an older version); it is left RUNNING. If its worker is gone, end it with "
                "study.tell(%d, state=optuna.trial.TrialState.FAIL)", trial.number, trial.number)


def _retry_history(trial: FrozenTrial) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """Start of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat); None when it is
    gone, a zombie (killed, not yet reaped) or there is no /proc."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # field 2, the command name, may hold spaces and ')'
    return None if fields[0] in ("Z", "X") else int(fields[19])  # fields[0] is field 3, the state


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
