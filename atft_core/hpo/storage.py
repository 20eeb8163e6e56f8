"""Where a study lives, and which storage fits how many workers.

| storage URL                       | workers                                   |
|-----------------------------------|-------------------------------------------|
| `sqlite:///PATH` (the default)    | one process                               |
| `journal:PATH` (append-only file) | several processes on one host             |
| `postgresql+psycopg2://...`       | several hosts (the `gpu` work pool)       |

SQLite has no row locks, so two processes can both claim the same queued trial; the journal file
appends under a file lock and replays the log, so exactly one process wins each claim; a SQL server
locks the trial's row. `check_workers` refuses a combination that could run a trial twice;
`storage_for_workers` picks the default for a stage's workers and `check_study_storage` /
`check_study_reachable` refuse, before any work, a study file the workers could not reach.
A killed worker's trial ends on every storage: by heartbeat on SQL, by asking this host whether the
worker process still runs on a journal file (`hpo.liveness`).

`${NAME}` in a URL is filled from each process's own environment (`expand_env`), so a password is
never an argument, a flow parameter or a line in a file; `display_url` hides it where the URL is shown.
"""

from __future__ import annotations

import re
import shlex
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from atft_core.errors import ConfigError
from atft_core.hpo.config import HpoConfig
from atft_core.redact import redact_url

JOURNAL_PREFIX = "journal:"
PASSWORD_PLACEHOLDER = "${OPTUNA_DB_PASSWORD}"  # the dashboard command's stand-in for a literal password
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def default_storage_url(study_dir: str | Path, processes: int = 1) -> str:
    """SQLite file for one process, a journal file beside it for several (see the module table)."""
    study_dir = Path(study_dir).resolve()
    if processes > 1:
        return f"{JOURNAL_PREFIX}{study_dir / 'optuna.log'}"
    return f"sqlite:///{study_dir / 'optuna.db'}"


def display_url(url: str) -> str:
    """The storage URL as shown in files, logs and artifacts: any password replaced by ***."""
    return redact_url(url)


def expand_env(url: str, env: Mapping[str, str] | None = None) -> str:
    """Fill `${NAME}` from the environment, so a password stays out of parameters, argv and the UI."""
    import os

    env = os.environ if env is None else env

    def fill(m: re.Match) -> str:
        if m.group(1) not in env:
            raise ValueError(f"storage URL refers to ${{{m.group(1)}}}, which is not set in this environment")
        return env[m.group(1)]

    return _ENV_REF.sub(fill, url)


def dashboard_command(url: str) -> str:
    """A shell command that opens the study in optuna-dashboard, runnable as printed.

    A `${VAR}` password placeholder is kept (the shell fills it inside the double quotes); a literal
    password becomes `${OPTUNA_DB_PASSWORD}`, never the password itself and never `***`.
    """
    if url.startswith(JOURNAL_PREFIX):
        return f"optuna-dashboard {shlex.quote(url[len(JOURNAL_PREFIX):])}"
    m = re.match(r"^([^:/]+://[^:/@]+:)([^@]*)(@.*)$", url)
    if m and not _ENV_REF.fullmatch(m.group(2)):
        url = m.group(1) + PASSWORD_PLACEHOLDER + m.group(3)
    # Double quotes: `${VAR}` expands, everything else (?, &, spaces) stays one argument.
    escaped = re.sub(r'(["\\`])', r"\\\1", url)
    escaped = re.sub(r"\$(?!\{[A-Za-z_][A-Za-z0-9_]*\})", r"\\$", escaped)
    return f'optuna-dashboard "{escaped}"'


def storage_kind(url: str) -> str:
    """sqlite | journal | server (any other SQLAlchemy URL)."""
    if url.startswith(JOURNAL_PREFIX):
        return "journal"
    return "sqlite" if url.startswith("sqlite:") else "server"


def check_workers(url: str, *, processes: int = 1, pool_workers: int = 1) -> None:
    """ValueError unless `url` is safe for `processes` local worker processes or `pool_workers` pool runs."""
    kind = storage_kind(url)
    shown = display_url(url)
    if pool_workers > 1 and kind != "server":
        raise ValueError(f"{pool_workers} HPO workers on the gpu pool cannot share the {kind} storage {shown}: the "
                         "workers may run on other hosts, which cannot see this file. Use PostgreSQL, e.g. "
                         "--storage 'postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db-host:5432/optuna' "
                         "(README: Adding GPU hosts), or one worker")
    if processes > 1 and kind == "sqlite":
        raise ValueError(f"{processes} worker processes cannot share the SQLite storage {shown}: SQLite cannot give "
                         "a queued trial to exactly one process. Use --storage journal:PATH (one host) or PostgreSQL, "
                         "or leave --storage out to get OUTPUT_DIR/optuna.log")


def build_storage(url: str, hpo: HpoConfig, env: Mapping[str, str] | None = None) -> optuna.storages.BaseStorage:
    """Storage for `url`: journal:<path> (file journal) or any SQLAlchemy URL (with heartbeat).

    SQL storages get Optuna's heartbeat: a trial whose worker died is marked FAIL by the next
    worker's `study.optimize` and retried with the same parameters (`hpo.max_retry` times at most).
    A journal file has no heartbeat; its workers share one host, which tells a dead worker's trial
    from a live one instead (`hpo.liveness`, run by `hpo.worker.end_stale_trials`).
    """
    url = expand_env(url, env)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}  # a reader (dashboard) may hold the lock
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


def refuse_literal_password(url: str) -> None:
    """A password written into the URL would travel as a parameter of every worker run (shown in the UI,
    stored in the database): only `${VAR}`, filled from each worker's own environment, is accepted."""
    netloc = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo and not userinfo.split(":", 1)[1].startswith("${"):
        raise ConfigError([f"storage {display_url(url)} carries a literal password"],
                          hint="write it as ${VAR} (e.g. postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db:5432/"
                               "optuna) and set VAR in the environment of this process and of every gpu worker")


class StudyNotReachable(RuntimeError):
    """A worker on another host was given a study file that exists only on the pipeline's host."""


def storage_for_workers(storage: str | None, study_dir: Path, workers: int, n_trials: int, *,
                        on_pool: bool) -> tuple[str, int]:
    """(storage URL, number of workers) for a stage; ValueError for a storage the workers cannot share.

    The default is `study_dir/optuna.db`, or `study_dir/optuna.log` for K > 1 local processes.
    """
    k = max(1, min(workers, n_trials))
    url = storage or default_storage_url(study_dir, processes=1 if on_pool else k)
    refuse_literal_password(url)
    check_workers(url, pool_workers=k if on_pool else 1, processes=1 if on_pool else k)
    return url, k


def check_study_storage(storage: str | None, study_dir: Path, workers: int, n_trials: int, *, on_pool: bool,
                        shared_disk: bool) -> str:
    """The pipeline's HPO storage, checked before the cache build and the gate (an hour of work that a
    storage the workers cannot reach would waste). Raises ConfigError; returns the URL.

    `shared_disk`: False when the pool's workers may sit on other hosts (results travel through S3),
    where a study file on this host is out of their reach.
    """
    try:
        url, _ = storage_for_workers(storage, study_dir, workers, n_trials, on_pool=on_pool)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError([str(exc)], hint="see README: HPO storage") from None
    if on_pool and not shared_disk and storage_kind(url) != "server":
        raise ConfigError([f"the study storage {display_url(url)} is a file on this host, and the gpu workers "
                           "share no disk with it (ATFT_ARTIFACT_URI is set: results travel through S3)"],
                          hint="give the run a PostgreSQL storage (-p storage='postgresql+psycopg2://optuna:"
                               "${OPTUNA_DB_PASSWORD}@db-host:5432/optuna'; README: Adding GPU hosts)")
    return url


def check_study_reachable(url: str) -> None:
    """A study file (SQLite, journal) must exist on this host; a database server is reachable from any."""
    kind = storage_kind(url)
    if kind == "server":
        return
    path = Path(url[len(JOURNAL_PREFIX):] if kind == "journal" else url[len("sqlite:///"):])
    if not path.exists():
        raise StudyNotReachable(f"the study storage {display_url(url)} is a file on the pipeline's host, which this "
                                "gpu worker cannot see: give the run a PostgreSQL storage "
                                "(-p storage='postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db-host:5432/optuna'; "
                                "README: Adding GPU hosts)")
