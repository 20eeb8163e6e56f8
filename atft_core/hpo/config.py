"""`HpoConfig`: the settings of one HPO invocation; `StudyBatch`: what it queued; shared attribute names."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRUNERS = ("median", "hyperband", "none")
BATCH_ATTR = "atft_batch"  # user attribute naming the `prepare_study` call that queued a trial
FAIL_KIND_ATTR = "fail_kind"  # diverged | training_error | out_of_memory | failed | crashed | worker_stopped
FAIL_REASON_ATTR = "fail_reason"
WORKER_ATTR = "worker"  # the worker's name, as in its report: host:pid#index
PROCESS_ATTR = "worker_process"  # host, boot, pid, start time: tells a dead worker from a live one (hpo.liveness)


@dataclass
class HpoConfig:
    """One HPO invocation. `n_trials` is the total for this invocation, however many workers share it."""

    n_trials: int = 5
    study_name: str = "atft"
    storage: str | None = None  # None: the default file in the output dir (hpo.storage.default_storage_url)
    pruner: str = "median"  # median | hyperband | none
    seed: int = 0
    max_epochs: int = 2
    timeout_s: float | None = None  # a worker stops taking new trials after this; the rest stay queued
    parallel: int = 1  # worker processes run_study starts on this host (each drains the same queue)
    search_space: str | None = None  # YAML path; None = atft_core/configs/search_space.yaml
    n_startup_trials: int = 10  # TPE samples at random until this many trials finished
    pruner_startup_trials: int = 2  # median: finished trials before any pruning
    pruner_warmup_epochs: int = 1  # epochs every trial gets before it may be pruned
    heartbeat_interval_s: int = 60  # SQL storages: a running trial proves it is alive this often
    grace_period_s: int = 180  # a trial silent this long is stale: marked FAIL and retried
    # retries of a trial whose worker died, on every storage (a trial that kills its worker every time stops)
    max_retry: int = 1

    def __post_init__(self) -> None:
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {PRUNERS}, got {self.pruner!r}")
        if self.n_trials < 0 or self.max_epochs < 1 or self.parallel < 1:
            raise ValueError(f"need n_trials >= 0, max_epochs >= 1, parallel >= 1; got n_trials={self.n_trials}, "
                             f"max_epochs={self.max_epochs}, parallel={self.parallel}")
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError("grace_period_s must exceed heartbeat_interval_s, or live trials are failed as stale")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> HpoConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown HPO setting(s) {unknown}; known: {sorted(known)}")
        return cls(**raw)


@dataclass(frozen=True)
class StudyBatch:
    """What `prepare_study` queued: the study, the trials' tag and the first trial number at the time."""

    study_name: str
    storage_url: str  # as given (may hold ${VAR} placeholders); redact before showing
    batch: str
    n_trials: int
    first_number: int
    queued: int  # trials waiting after queuing (this batch's, plus any an earlier run left): the workers' total
