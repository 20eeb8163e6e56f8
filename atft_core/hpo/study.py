"""Hyperparameter search for ATFT-GAT-FAN with Optuna: resumable, prunable, shared by many workers.

The study lives in storage, never in a process: a SQLite file by default (`<output_dir>/optuna.db`),
any SQLAlchemy URL (PostgreSQL when workers run on several hosts) or `journal:<path>`. A rerun with
the same storage and study name continues the study (`load_if_exists`).

How K workers produce exactly N trials: the caller puts N *queued* trials into the study
(`prepare_study`, Optuna's WAITING state) and every worker drains that queue; a worker never creates
a trial of its own. Trial numbers come from the storage, so they are unique across processes and
hosts, and a worker that joins late simply takes the next queued trial. (Counting finished trials and
stopping at N, as `MaxTrialsCallback` does, overshoots when two workers check at the same moment.)

What ends a trial, and how it is recorded:
- it finishes: COMPLETE, value = best validation RankIC over its epochs (maximised);
- the pruner stops it after an epoch (median by default, Hyperband selectable): PRUNED;
- it diverges (non-finite loss) or runs out of memory: FAIL, with the reason in the user attribute
  `fail_reason`; the worker goes on with the next trial. Never a fake value: a failed trial must not
  look like a poor configuration to the sampler;
- its worker is killed (SIGKILL, preempted host): its heartbeat stops, the next worker to look marks
  it FAIL and queues a retry with the same parameters (`RetryHeartbeatStaleTrialCallback`; SQL
  storages only, the journal file has no heartbeat).
An objective may also raise `TrialFailed` (a configuration it cannot score): FAIL with the reason.
Any other exception is a bug: the trial is marked FAIL (with the reason) and the exception propagates;
the trials still queued stay queued for the next run.

Pure library: no Prefect here. `run_study` is the whole thing in one call; `prepare_study`,
`run_worker` / `spawn_worker` and `finish_study` are its parts, for orchestrators that run workers
elsewhere (flows/hpo_stage.py fans them out to the `gpu` work pool).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from atft_core.config import DryRunConfig, read_yaml_mapping
from atft_core.errors import TrainingError
from atft_core.publish import redact_url
from atft_core.rundir import write_json

log = logging.getLogger("atft_core.hpo.study")

DEFAULT_SEARCH_SPACE = Path(__file__).resolve().parents[1] / "configs" / "search_space.yaml"
STORAGE_ENV = "ATFT_HPO_STORAGE"  # how a spawned worker gets the storage URL (never argv or a file)
BATCH_ATTR = "atft_batch"  # user attribute naming the `prepare_study` call that queued a trial
FAIL_REASON_ATTR = "fail_reason"
FAIL_KIND_ATTR = "fail_kind"
JOURNAL_PREFIX = "journal:"
PRUNERS = ("median", "hyperband", "none")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# --------------------------------------------------------------------------------------------------
# Configuration
@dataclass
class HpoConfig:
    """One HPO invocation. `n_trials` is the total for this invocation, however many workers share it."""

    n_trials: int = 5
    study_name: str = "atft"
    storage: str | None = None  # None: sqlite:///<output_dir>/optuna.db; a SQLAlchemy URL; journal:<path>
    pruner: str = "median"  # median | hyperband | none
    seed: int = 0
    max_epochs: int = 2
    timeout_s: float | None = None  # a worker stops taking new trials after this; the rest stay queued
    parallel: int = 1  # worker processes run_study starts (each drains the same queue)
    search_space: str | None = None  # YAML path; None = atft_core/configs/search_space.yaml
    n_startup_trials: int = 10  # TPE samples at random until this many trials finished
    pruner_startup_trials: int = 2  # median: finished trials before any pruning
    pruner_warmup_epochs: int = 1  # epochs every trial gets before it may be pruned
    heartbeat_interval_s: int = 60  # SQL storages: a running trial proves it is alive this often
    grace_period_s: int = 180  # a trial silent this long is stale: marked FAIL and retried
    max_retry: int = 1  # retries of a stale trial (a trial that kills its worker every time stops)

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


# --------------------------------------------------------------------------------------------------
# Search space
@dataclass(frozen=True)
class SearchSpace:
    """Dotted DryRunConfig paths (`train.lr`) mapped to Optuna distributions, read from YAML."""

    params: dict[str, optuna.distributions.BaseDistribution]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> SearchSpace:
        path = Path(path) if path else DEFAULT_SEARCH_SPACE
        return cls.from_dict(read_yaml_mapping(path, "search space", "parameter paths"), str(path))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "<dict>") -> SearchSpace:
        entries = raw.get("params") if isinstance(raw, Mapping) else None
        if not isinstance(entries, Mapping) or not entries:
            raise ValueError(f"{source}: expected a non-empty mapping under 'params' (dotted config path -> spec)")
        problems: list[str] = []
        params: dict[str, optuna.distributions.BaseDistribution] = {}
        for name, spec in entries.items():
            try:
                params[name] = _distribution(name, spec)
            except (TypeError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
        problems += _joint_problems(params)
        if problems:
            raise ValueError(f"{source}: invalid search space:\n  - " + "\n  - ".join(problems))
        return cls(params, source)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter for `trial` (a retried or enqueued trial gets its fixed values back)."""
        out: dict[str, Any] = {}
        for name, dist in self.params.items():
            if isinstance(dist, optuna.distributions.FloatDistribution):
                out[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                out[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                out[name] = trial.suggest_categorical(name, dist.choices)
        return out


def _distribution(name: str, spec: Any) -> optuna.distributions.BaseDistribution:
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError("needs a mapping with 'type' (float | int | categorical)")
    default = _config_field(name)
    kind = spec["type"]
    extra = sorted(set(spec) - {"type", "low", "high", "log", "step", "choices"})
    if extra:
        raise ValueError(f"unknown key(s) {extra}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("categorical needs a non-empty 'choices' list")
        for c in choices:
            _check_value_type(default, c)
        return optuna.distributions.CategoricalDistribution(choices)
    if kind not in ("float", "int"):
        raise ValueError(f"type must be float, int or categorical, got {kind!r}")
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{kind} needs 'low' and 'high'")
    if kind == "int" and type(default) is float:
        kind = "float"  # an int range for a float field is still a float
    if kind == "float":
        if type(default) is not float:
            raise ValueError(f"float range for a field of type {type(default).__name__}")
        return optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]),
                                                      log=bool(spec.get("log", False)), step=spec.get("step"))
    if type(default) is not int and default is not None:  # None: an optional int such as max_train_days
        raise ValueError(f"int range for a field of type {type(default).__name__}")
    return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                                step=int(spec.get("step", 1)))


def _config_field(path: str) -> Any:
    """The default value at a dotted DryRunConfig path; ValueError naming the known fields otherwise."""
    node: Any = DryRunConfig()
    walked = []
    for part in path.split("."):
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"'{'.'.join(walked)}' is a value, not a section")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(walked) or "config"
            raise ValueError(f"'{part}' is not a field of {where}; known: {names}")
        node = getattr(node, part)
        walked.append(part)
    if dataclasses.is_dataclass(node):
        raise ValueError("names a whole section; name one of its fields")
    if isinstance(node, (tuple, list, dict)):
        raise TypeError(f"is a {type(node).__name__}; only scalar fields can be searched")
    return node


def _check_value_type(default: Any, value: Any) -> None:
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        hint = ""
        if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][0-9]+", value):
            hint = f" (YAML reads {value} as text: write the exponent with a sign, e.g. 1.0e+6)"
        raise ValueError(f"choice {value!r} does not fit a field of type {type(default).__name__}{hint}")


def _joint_problems(params: Mapping[str, optuna.distributions.BaseDistribution]) -> list[str]:
    """Combinations the model cannot use, caught when the file is read rather than in trial 37."""
    hidden, heads = params.get("model.hidden"), params.get("model.attn_heads")
    if not (isinstance(hidden, optuna.distributions.CategoricalDistribution)
            and isinstance(heads, optuna.distributions.CategoricalDistribution)):
        return []
    bad = [(d, h) for d in hidden.choices for h in heads.choices if int(d) % int(h)]
    return [f"model.hidden {d} is not divisible by model.attn_heads {h}" for d, h in bad]


def apply_params(cfg: DryRunConfig, params: Mapping[str, Any]) -> DryRunConfig:
    """A copy of `cfg` with each dotted path set to its value (the input is left untouched)."""
    out = DryRunConfig.from_dict(cfg.to_dict())
    for path, value in params.items():
        *sections, leaf = path.split(".")
        node: Any = out
        for s in sections:
            node = getattr(node, s)
        if not hasattr(node, leaf):
            raise ValueError(f"{path}: no such config field")
        setattr(node, leaf, value)
    return out


# --------------------------------------------------------------------------------------------------
# Storage and study
def display_url(url: str) -> str:
    """The storage URL as shown in files, logs and artifacts: any password replaced by ***."""
    return redact_url(url)


def dashboard_command(url: str) -> str:
    """How to watch the study live (a journal file is passed to optuna-dashboard as a plain path)."""
    if url.startswith(JOURNAL_PREFIX):
        return f"optuna-dashboard {url[len(JOURNAL_PREFIX):]}"
    return f"optuna-dashboard '{display_url(url)}'"


def default_storage_url(study_dir: str | Path) -> str:
    return f"sqlite:///{(Path(study_dir) / 'optuna.db').resolve()}"


def expand_env(url: str, env: Mapping[str, str] | None = None) -> str:
    """Fill `${NAME}` from the environment, so a password stays out of parameters, argv and the UI."""
    env = os.environ if env is None else env

    def fill(m: re.Match) -> str:
        if m.group(1) not in env:
            raise ValueError(f"storage URL refers to ${{{m.group(1)}}}, which is not set in this environment")
        return env[m.group(1)]

    return _ENV_REF.sub(fill, url)


def build_storage(url: str, hpo: HpoConfig, env: Mapping[str, str] | None = None) -> optuna.storages.BaseStorage:
    """Storage for `url`: journal:<path> (file journal) or any SQLAlchemy URL (with heartbeat)."""
    url = expand_env(url, env)
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # Several workers write one file: wait for its lock rather than fail with "database is locked".
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}  # a server restart between trials is not an error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=hpo.heartbeat_interval_s,
            grace_period=hpo.grace_period_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=hpo.max_retry))


def make_pruner(hpo: HpoConfig) -> optuna.pruners.BasePruner:
    if hpo.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=hpo.pruner_startup_trials,
                                           n_warmup_steps=hpo.pruner_warmup_epochs)
    if hpo.pruner == "hyperband":
        # Epochs are the resource; Hyperband needs a range, so max_resource is at least 2.
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, hpo.max_epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(storage: optuna.storages.BaseStorage, hpo: HpoConfig, sampler_seed: int | None = None) -> optuna.Study:
    """Create the study or load it (a rerun continues it). The sampler is seeded per worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        sampler = optuna.samplers.TPESampler(seed=hpo.seed if sampler_seed is None else sampler_seed,
                                             n_startup_trials=hpo.n_startup_trials, constant_liar=True)
    return optuna.create_study(storage=storage, study_name=hpo.study_name, direction="maximize", sampler=sampler,
                               pruner=make_pruner(hpo), load_if_exists=True)


def worker_seed(seed: int, first_number: int, worker_index: int) -> int:
    """Distinct per worker and per invocation: same-seeded workers would sample identical trials."""
    return int(np.random.SeedSequence([seed, first_number, worker_index]).generate_state(1)[0])


@dataclass(frozen=True)
class StudyBatch:
    """What `prepare_study` queued: the study, the trials' tag and the first trial number at the time."""

    study_name: str
    storage_url: str  # as given (may hold ${VAR} placeholders); redact before showing
    batch: str
    n_trials: int
    first_number: int


def prepare_study(hpo: HpoConfig, storage_url: str) -> StudyBatch:
    """Create or load the study and queue `hpo.n_trials` trials for workers to drain."""
    study = open_study(build_storage(storage_url, hpo), hpo)
    first = len(study.get_trials(deepcopy=False))
    batch = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    for _ in range(hpo.n_trials):
        study.enqueue_trial({}, user_attrs={BATCH_ATTR: batch})  # {}: every parameter left to the sampler
    log.info("study %s (%s): %d trial(s) so far, queued %d (batch %s)", hpo.study_name, display_url(storage_url),
             first, hpo.n_trials, batch)
    return StudyBatch(hpo.study_name, storage_url, batch, hpo.n_trials, first)


# --------------------------------------------------------------------------------------------------
# Objectives
class TrialFailed(RuntimeError):
    """Raised by an objective for a configuration that cannot be scored: recorded as FAIL, study goes on."""


class _Clock:
    """Seconds spent per kind of work within one trial (storage calls vs training), for the overhead bench."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - t0


@dataclass
class TrialContext:
    """What an objective gets: the trial, its full config (base + sampled values) and where things are."""

    trial: optuna.Trial
    cfg: DryRunConfig
    cache_path: Path
    output_dir: Path
    clock: _Clock = field(default_factory=_Clock)

    def report(self, epoch: int, value: float | None) -> None:
        """Report one epoch's validation RankIC; raise TrialPruned when the pruner says stop."""
        if value is None or not math.isfinite(value):
            return  # no RankIC this epoch (too few stocks): nothing the pruner could compare
        with self.clock("report"):
            self.trial.report(float(value), epoch)
            # After the last epoch there is nothing left to save: the trial is complete, not pruned.
            prune = epoch < self.cfg.train.max_epochs - 1 and self.trial.should_prune()
        if prune:
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: validation RankIC {value:+.4f}")


Objective = Callable[[TrialContext], float]


def train_objective(ctx: TrialContext) -> float:
    """Train on the cache with this trial's config; the best epoch's validation RankIC is the value."""
    from atft_core.train.trainer import Trainer  # torch loads only where a trial really trains

    trainer = Trainer(_open_cache(str(ctx.cache_path)), ctx.cfg,
                      on_epoch=lambda rec: ctx.report(rec["epoch"], rec["val_rankic"]))
    result = trainer.fit()
    history = [{k: _round(r.get(k)) for k in ("epoch", "train_loss", "val_rankic", "val_ic", "seconds")}
               for r in result.history]
    with ctx.clock("attrs"):
        ctx.trial.set_user_attr("history", history)
        ctx.trial.set_user_attr("best_epoch", int(result.best_epoch))
    if not math.isfinite(result.best_rankic):
        raise TrialFailed("no validation RankIC on any epoch: every validation day had fewer than "
                          f"data.min_stocks={ctx.cfg.data.min_stocks} names with a known target")
    return float(result.best_rankic)


@functools.lru_cache(maxsize=2)
def _open_cache(path: str):
    from atft_core.data.cache import open_cache

    return open_cache(path)  # memory-mapped: every trial of this worker shares the pages


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v)


def objective_path(objective: Objective | str | None) -> str:
    """`module:name` of an objective, so a worker process can import it."""
    if objective is None:
        return f"{__name__}:train_objective"
    if isinstance(objective, str):
        return objective
    qual = getattr(objective, "__qualname__", "")
    if "<" in qual or getattr(objective, "__module__", "__main__") == "__main__":
        raise ValueError(f"objective {objective!r} must be a module-level function to run in worker processes")
    return f"{objective.__module__}:{qual}"


def load_objective(path: str) -> Objective:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def failure(exc: BaseException) -> tuple[str, str] | None:
    """(kind, reason) for a failure that ends one trial but not the study; None for anything else (a bug)."""
    if isinstance(exc, TrainingError):
        return ("diverged" if "non-finite" in str(exc) else "training_error"), str(exc)
    if isinstance(exc, TrialFailed):
        return "failed", str(exc)
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return "out_of_memory", f"{type(exc).__name__}: {exc}".strip()
    return None


def _free_memory() -> None:
    """After an out-of-memory trial (its exception and frames gone): give the next trial that memory."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Workers
@dataclass
class WorkerReport:
    worker: str
    trials: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_worker(cache_path: str | Path, base_cfg: DryRunConfig, hpo: HpoConfig, output_dir: str | Path, *,
               storage_url: str | None = None, worker_index: int = 0, sampler_seed: int | None = None,
               objective: Objective | str | None = None, env: Mapping[str, str] | None = None) -> WorkerReport:
    """Drain the study's queue: take a queued trial, run it, record it, until none is left (or timeout)."""
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    url = expand_env(storage_url or default_storage_url(output_dir), env)
    study = open_study(build_storage(url, hpo, env), hpo, sampler_seed)
    space = SearchSpace.load(hpo.search_space)
    fn = load_objective(objective) if isinstance(objective, str) else (objective or train_objective)
    name = f"{socket.gethostname()}:{os.getpid()}#{worker_index}"
    deadline = None if hpo.timeout_s is None else time.monotonic() + hpo.timeout_s
    done: list[dict[str, Any]] = []
    while deadline is None or time.monotonic() < deadline:
        clock = _Clock()
        with clock("claim"), _queue_lock(url):
            _fail_stale_trials(study)
            trial = _claim_queued_trial(study)
        if trial is None:
            break
        done.append(_run_trial(study, trial, fn, space, base_cfg, hpo, Path(cache_path), output_dir, name, clock))
    if deadline is not None and time.monotonic() >= deadline:
        log.info("worker %s: time budget of %ss used; queued trials stay for the next run", name, hpo.timeout_s)
    _release(study)
    return WorkerReport(name, done, round(time.perf_counter() - t0, 3))


@contextmanager
def _queue_lock(url: str) -> Iterator[None]:
    """Serialise queue operations on a SQLite study across processes.

    SQL servers make a claim atomic by locking the trial's row (SELECT ... FOR UPDATE). SQLite has no
    row locks and Python's driver reads outside a transaction, so two workers can both see a trial
    WAITING and both run it (seen here with two processes). A SQLite file is on one host anyway,
    so a file lock next to it is enough. Other storages need none.
    """
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(f"{url[len('sqlite:///'):]}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials of dead workers FAIL; the storage's callback queues their retries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _claim_queued_trial(study: optuna.Study) -> optuna.Trial | None:
    """`Study.ask()` without its create-a-new-trial branch: claim a queued trial or return None.

    The claim is atomic in the storage (WAITING -> RUNNING succeeds for one worker only). Optuna has
    no public call for "queued trial or nothing", so this uses the two Study internals ask() itself
    uses; optuna is pinned (==5.0.0) and tests/test_hpo.py exercises this path.
    """
    trial_id = study._pop_waiting_trial_id()
    if trial_id is None:
        return None
    study._thread_local.cached_all_trials = None  # as ask(): the sampler sees the storage as it is now
    return optuna.Trial(study, trial_id)


def _run_trial(study: optuna.Study, trial: optuna.Trial, fn: Objective, space: SearchSpace, base_cfg: DryRunConfig,
               hpo: HpoConfig, cache_path: Path, output_dir: Path, worker: str, clock: _Clock) -> dict[str, Any]:
    from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses for the same job

    state, value, reason, kind = TrialState.COMPLETE, None, None, None
    t_run = time.perf_counter()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            with clock("sample"):
                params = space.suggest(trial)
            with clock("attrs"):
                trial.set_user_attr("worker", worker)
            cfg = _trial_config(base_cfg, params, hpo)
            value = float(fn(TrialContext(trial, cfg, cache_path, output_dir, clock)))
            if not math.isfinite(value):  # optuna's tell() refuses it; it is no score either
                raise TrialFailed(f"the objective returned {value}")
        except optuna.TrialPruned as exc:
            state, reason = TrialState.PRUNED, str(exc)
        except BaseException as exc:  # KeyboardInterrupt too: a trial must not stay RUNNING
            known = failure(exc) if isinstance(exc, Exception) else None
            kind, reason = known or ("crashed", f"{type(exc).__name__}: {exc}")
            state = TrialState.FAIL
            _tell_failed(study, trial, kind, reason)
            if known is None:
                raise
    objective_s = time.perf_counter() - t_run
    if state != TrialState.FAIL:
        with clock("tell"):
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    else:
        log.warning("trial %d failed (%s); the study goes on", trial.number, reason)
        if kind == "out_of_memory":
            _free_memory()
    storage_s = sum(v for k, v in clock.seconds.items() if k in ("claim", "attrs", "report", "tell"))
    train_s = objective_s - sum(v for k, v in clock.seconds.items() if k in ("sample", "attrs", "report"))
    return {"number": trial.number, "state": state.name, "value": value if state == TrialState.COMPLETE else None,
            "reason": reason, "objective_s": round(objective_s, 4), "train_s": round(train_s, 4),
            "storage_s": round(storage_s, 4), "sample_s": round(clock.seconds.get("sample", 0.0), 4),
            "calls_s": {k: round(v, 4) for k, v in clock.seconds.items()}}


def _trial_config(base_cfg: DryRunConfig, params: Mapping[str, Any], hpo: HpoConfig) -> DryRunConfig:
    cfg = apply_params(base_cfg, params)
    cfg.train.max_epochs = hpo.max_epochs
    cfg.train.progress = False  # K workers' progress bars in one log are noise
    return cfg


def _tell_failed(study: optuna.Study, trial: optuna.Trial, kind: str, reason: str) -> None:
    trial.set_user_attr(FAIL_KIND_ATTR, kind)
    trial.set_user_attr(FAIL_REASON_ATTR, reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _release(study: optuna.Study) -> None:
    remove = getattr(study._storage, "remove_session", None)
    if remove is not None:
        remove()  # close this thread's DB session (as Study.optimize does on the way out)


# Worker processes ----------------------------------------------------------------------------------
def spawn_worker(cache_path: str | Path, base_cfg: DryRunConfig, hpo: HpoConfig, output_dir: str | Path, *,
                 storage_url: str, worker_index: int, sampler_seed: int, spec_dir: str | Path,
                 objective: Objective | str | None = None, threads: int | None = None) -> subprocess.Popen:
    """Start `python -m atft_core.hpo.worker` draining the same queue; its log goes to O/workers/.

    The storage URL travels in the child's environment, never in argv (visible in `ps`) or in a file
    under the output dir (which is mirrored to S3).
    """
    output_dir = Path(output_dir)
    spec = {"cache_path": str(cache_path), "config": base_cfg.to_dict(), "hpo": {**hpo.to_dict(), "storage": None},
            "output_dir": str(output_dir), "worker_index": worker_index, "sampler_seed": sampler_seed,
            "objective": objective_path(objective), "result": str(worker_file(output_dir, worker_index, "json"))}
    worker_file(output_dir, worker_index, "json").unlink(missing_ok=True)  # never read a previous run's report
    spec_path = Path(spec_dir) / f"worker-{worker_index}.json"
    spec_path.write_text(json.dumps(spec, default=str))
    env = {**os.environ, STORAGE_ENV: storage_url,
           # the parent's import path (e.g. a test module's objective) must resolve in the child too
           "PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}
    if threads:  # K CPU workers each using every core would slow all of them down
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    logfile = worker_file(output_dir, worker_index, "log")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "atft_core.hpo.worker", str(spec_path)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())


def worker_file(output_dir: Path, worker_index: int, suffix: str) -> Path:
    return Path(output_dir) / "workers" / f"worker-{worker_index}.{suffix}"


class WorkerError(RuntimeError):
    """A worker process exited with an error; the study and the other workers' trials are intact."""


def run_worker_processes(cache_path: str | Path, base_cfg: DryRunConfig, hpo: HpoConfig, output_dir: str | Path,
                         batch: StudyBatch, objective: Objective | str | None = None
                         ) -> tuple[list[WorkerReport], list[str]]:
    """K worker processes on one queue; wait for all. Returns their reports and one error per failed worker."""
    k = max(1, min(hpo.parallel, batch.n_trials))
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="atft-hpo-spec-") as spec_dir:
        procs = [spawn_worker(cache_path, base_cfg, hpo, output_dir, storage_url=batch.storage_url,
                              worker_index=i, sampler_seed=worker_seed(hpo.seed, batch.first_number, i),
                              spec_dir=spec_dir, objective=objective, threads=max(1, (os.cpu_count() or 1) // k))
                 for i in range(k)]
        try:
            codes = [p.wait() for p in procs]
        except BaseException:  # interrupted while waiting: no orphan keeps training
            for p in procs:
                p.terminate()
            raise
    reports = [WorkerReport(**json.loads(worker_file(output_dir, i, "json").read_text()))
               for i in range(k) if worker_file(output_dir, i, "json").exists()]
    errors = [f"worker {i} exited with code {c} (log: {worker_file(output_dir, i, 'log')})"
              for i, c in enumerate(codes) if c != 0]
    return reports, errors


# --------------------------------------------------------------------------------------------------
# The whole study, and its report
@dataclass
class HpoSummary:
    study_name: str
    storage: str  # redacted
    batch: str
    requested: int
    counts: dict[str, int]  # this invocation's trials (queued by it, retries included)
    study_counts: dict[str, int]  # every trial of the study so far
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    importances: dict[str, float]
    overhead: dict[str, float]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    objective: str = "validation RankIC of the best epoch (maximised)"
    dashboard: str = ""  # the command that opens this study in optuna-dashboard

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_study(cache_path: str | Path, base_cfg: DryRunConfig, hpo: HpoConfig, output_dir: str | Path, *,
              objective: Objective | str | None = None) -> HpoSummary:
    """Queue `hpo.n_trials` trials, run them on `hpo.parallel` workers, write hpo.json, trials.csv, plots.

    `objective` replaces training (tests and benchmarks); worker processes import it by name, so it
    must be a module-level function there.
    """
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    SearchSpace.load(hpo.search_space)  # a bad file fails here, before anything is queued
    if hpo.parallel > 1:
        objective_path(objective)  # likewise an objective worker processes could not import
    batch = prepare_study(hpo, hpo.storage or default_storage_url(output_dir))
    errors: list[str] = []
    if hpo.parallel <= 1 or batch.n_trials <= 1:
        reports = [run_worker(cache_path, base_cfg, hpo, output_dir, storage_url=batch.storage_url,
                              sampler_seed=worker_seed(hpo.seed, batch.first_number, 0), objective=objective)]
    else:
        reports, errors = run_worker_processes(cache_path, base_cfg, hpo, output_dir, batch, objective)
    summary = finish_study(hpo, batch, output_dir, reports, seconds=time.perf_counter() - t0, errors=errors)
    if errors:
        raise WorkerError(f"{'; '.join(errors)}; the report is in {output_dir / 'hpo.json'}")
    return summary


def finish_study(hpo: HpoConfig, batch: StudyBatch, output_dir: str | Path, reports: list[WorkerReport], *,
                 seconds: float, errors: list[str] | None = None) -> HpoSummary:
    """Summarise the study (this batch and all of it) and write hpo.json, trials.csv and the plots."""
    output_dir = Path(output_dir)
    study = optuna.load_study(study_name=batch.study_name, storage=build_storage(batch.storage_url, hpo))
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.user_attrs.get(BATCH_ATTR) == batch.batch]
    best = _best(trials)
    summary = HpoSummary(
        study_name=batch.study_name, storage=display_url(batch.storage_url), batch=batch.batch,
        requested=batch.n_trials, counts=_counts(mine), study_counts=_counts(trials),
        best_value=best.value if best else None, best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None, importances=_importances(study),
        overhead=_overhead(reports), seconds=round(seconds, 3), errors=list(errors or []),
        dashboard=dashboard_command(batch.storage_url))
    summary.files = {k: str(v) for k, v in write_reports(study, summary, output_dir).items()}
    write_json(output_dir / "hpo.json", _json_safe(summary.to_dict()))
    summary.files["hpo.json"] = str(output_dir / "hpo.json")
    log.info("study %s: best RankIC %s (trial %s); this run %s", batch.study_name, best.value if best else None,
             summary.best_trial, summary.counts)
    return summary


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return max(done, key=lambda t: t.value) if done else None


def _counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {s: 0 for s in ("complete", "pruned", "failed", "running", "waiting")}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in trials:
        out[names[t.state]] += 1
    out["total"] = len(trials)
    return out


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's default importances (PED-ANOVA in 5.0) over completed trials; {} until there are enough."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "quantiles select the same trials": few trials
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError) as exc:  # e.g. every completed trial has the same parameters
        log.info("parameter importances not available: %s", exc)
        return {}


def _overhead(reports: list[WorkerReport]) -> dict[str, float]:
    rows = [t for r in reports for t in r.trials]
    storage = sum(t["storage_s"] for t in rows)
    train = sum(t["train_s"] for t in rows)
    return {"trials": len(rows), "storage_s": round(storage, 4), "sample_s": round(sum(t["sample_s"] for t in rows), 4),
            "train_s": round(train, 4), "storage_per_train": round(storage / train, 6) if train > 0 else None}


def write_reports(study: optuna.Study, summary: HpoSummary, output_dir: Path) -> dict[str, Path]:
    """trials.csv and the two PNG plots (always written, saying so when there is nothing to draw yet)."""
    from atft_core.evaluate.plots import plot_hpo_history, plot_param_importances

    files = {"trials.csv": output_dir / "trials.csv"}
    df = study.trials_dataframe()
    df.to_csv(files["trials.csv"], index=False)
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value} for t in study.get_trials(deepcopy=False)]
    files["optimization_history.png"] = plot_hpo_history(rows, plots / "optimization_history.png")
    files["param_importances.png"] = plot_param_importances(
        summary.importances, plots / "param_importances.png",
        note="" if summary.importances else "needs at least 2 completed trials with different parameters")
    return files


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain row per trial (for tables in an orchestrator's UI): number, state, value, params, reason."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    rows = []
    for t in trials:
        reason = t.user_attrs.get(FAIL_REASON_ATTR, "")
        if t.state == TrialState.FAIL and not reason and t.number in retried:
            # A stale trial is failed by another worker, which can no longer write attributes on it.
            reason = f"its worker stopped (no heartbeat); retried as trial {retried[t.number]}"
        rows.append({"number": t.number, "state": t.state.name, "value": _round(t.value),
                     "epochs": len(t.intermediate_values), **{k: _round(v) for k, v in t.params.items()},
                     "fail_reason": reason, "retry_of": t.system_attrs.get("failed_trial", "")})
    return rows


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
