"""Errors a user can act on.

`DatasetError` gathers every problem found in one input so that a nightly run reports them all at
once (file, column, problem, what to do) instead of failing on the first and hiding the rest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (column, may be empty) and what to do about it."""

    column: str
    message: str

    def render(self) -> str:
        where = f"column '{self.column}'" if self.column else "file"
        return f"{where}: {self.message}"


class DatasetError(ValueError):
    """The input data breaks the contract. The CLI prints it and exits 2; nothing is written."""

    def __init__(self, source: str, problems: list[Problem] | Problem | str, *, transient: bool = False):
        # transient: the same call may succeed later (an endpoint not answering); everything else
        # (a missing file, bucket or column) fails the same way again, so it is never retried.
        self.transient = transient
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.source = str(source)
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"invalid dataset {self.source}"
        if len(self.problems) == 1:
            return f"{head}: {self.problems[0].render()}"
        lines = [f"{head}: {len(self.problems)} problems"]
        lines += [f"  - {p.render()}" for p in self.problems]
        return "\n".join(lines)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no training days, ...). The message names where."""


class ConfigError(ValueError):
    """Config values (YAML or command-line flags) out of range. Checked before anything runs."""

    def __init__(self, problems: list[str],
                 hint: str = "correct it in the config file (--config) or with the flag named"):
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"invalid configuration: {self.problems[0]}; {hint}"
        else:
            text = "\n".join([f"invalid configuration: {len(self.problems)} problems ({hint})"]
                              + [f"  - {p}" for p in self.problems])
        super().__init__(text)
