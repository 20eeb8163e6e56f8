"""What the CLI printed, minus the test harness's own noise."""

from __future__ import annotations

import re

# Prefect's console handler keeps the stream of an earlier test's capture; writing to it after that
# capture closed is a "--- Logging error ---" of the test harness, not of the command under test.
_HARNESS_LOG_ERROR = re.compile(r"--- Logging error ---.*?\nArguments: [^\n]*\n", flags=re.S)


def has_traceback(*texts: str) -> bool:
    return "Traceback" in _HARNESS_LOG_ERROR.sub("", "".join(texts))
