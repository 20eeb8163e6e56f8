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

    def __init__(self, source: str, problems: list[Problem] | Problem | str):
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
