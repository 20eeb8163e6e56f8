"""The journal file's heartbeat: is the worker process that runs a trial still alive?

A SQL storage learns that a worker died from its silence (Optuna's heartbeat). A journal file has no
heartbeat, but its workers all run on one host, which can answer directly: each worker records on
every trial it runs which process it is (`this_process`), and `end_dead_workers_trials` fails the
RUNNING trials whose process is gone and queues their retries with the bookkeeping of Optuna's
`RetryHeartbeatStaleTrialCallback` (so `report.trial_rows` explains them like a SQL storage's).

The record is a `process_record.ProcessRecord` (host, boot, pid namespace, pid, start time: why each,
there); on a host without /proc only the pid is recorded, and a reused pid keeps a trial RUNNING.
"""

from __future__ import annotations

import copy
import datetime
import logging
import socket
import warnings
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from atft_core.hpo.config import FAIL_KIND_ATTR, FAIL_REASON_ATTR, PROCESS_ATTR, WORKER_ATTR
from atft_core.process_record import ProcessRecord

log = logging.getLogger("atft_core.hpo.liveness")

# Between claiming a trial and recording its process a worker makes one storage call; a trial
# younger than this without a record is most likely in that gap, so it is not worth a warning yet.
RECORD_GRACE_S = 60.0
# Attributes of one attempt: a retry starts without them (another worker writes its own).
_ATTEMPT_ATTRS = (WORKER_ATTR, PROCESS_ATTR, FAIL_KIND_ATTR, FAIL_REASON_ATTR)


def this_process() -> dict[str, Any]:
    """The record a worker writes on each trial it runs (user attribute `worker_process`)."""
    return ProcessRecord.current().to_dict()


def process_record(pid: int) -> dict[str, Any]:
    """The record of process `pid` of this host."""
    return ProcessRecord.of(pid).to_dict()


def is_alive(record: dict[str, Any]) -> bool | None:
    """Whether the recorded process still runs; None when this host cannot tell (another host's process)."""
    return ProcessRecord.from_dict(record).is_alive()


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
        process = ProcessRecord.from_dict(record) if isinstance(record, dict) else None
        alive = process.is_alive() if process is not None else None
        if alive is None:
            _warn_unknown(trial, record)
            continue
        if alive:
            continue
        history = _retry_history(trial)
        retry = max_retry is None or len(history) < max_retry
        reason = f"its worker stopped ({process.describe()} is gone)"
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
