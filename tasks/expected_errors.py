"""Failures that are answers (bad input, a failed gate, a GPU pool that never answered), logged without tracebacks.

Prefect's engine logs every exception that ends a task or flow run with its traceback ("Task run
failed with exception", "Encountered exception during execution"). For the failures a user can act
on, the traceback hides the one line that matters: the run's final state ("Finished in state
Failed('...')") and the CLI's `error:` line already carry the message. So a filter on Prefect's run
loggers drops those two records for the registered classes; every other exception (a bug) keeps
its traceback.

Nothing happens on import: the CLI's `main` and each flow's body call `install_log_filter()` (it is
idempotent), so the filter is in place in whichever process runs the flow, a deployment worker's
included.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from atft_core.errors import ConfigError, DatasetError
from atft_core.hpo.storage import StudyNotReachable
from atft_core.s3.folders import ExchangeError, PublishError
from atft_core.train.checkpoint import CheckpointMismatch

E = TypeVar("E", bound=type[BaseException])

# S3 failures too: their message already names the endpoint, the bucket and what to check.
EXPECTED: list[type[BaseException]] = [DatasetError, ConfigError, CheckpointMismatch, ExchangeError, PublishError,
                                       StudyNotReachable]
_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
# The records that repeat the exception with its traceback; the state lines after them stay.
_REPEATS = ("Task run failed with exception", "Encountered exception during execution")


def expected(cls: E) -> E:
    """Class decorator: this exception is an answer, not a bug (logged without a traceback)."""
    EXPECTED.append(cls)
    return cls


def is_expected(exc: BaseException | None) -> bool:
    return exc is not None and isinstance(exc, tuple(EXPECTED))


class ExpectedErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not is_expected(exc):
            return True
        if str(record.msg).startswith(_REPEATS):
            return False
        record.exc_info, record.exc_text = None, None  # keep the line, drop the traceback
        return True


def install_log_filter() -> None:
    """Put an `ExpectedErrorFilter` on each Prefect run logger (idempotent: one filter per logger)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedErrorFilter) for f in logger.filters):
            logger.addFilter(ExpectedErrorFilter())
