"""The goal ledger: one line per look at the goal seeds' test days, so a reader knows how often they were seen.

A test window scored after every round of changes becomes a validation window. So the goals run
(`python -m bench.walk_forward --goals`) is the only thing that scores the goal seeds' test days,
and each run appends one JSON line to ``bench/goal_ledger.jsonl``: the UTC time, the git commit
(and whether the work tree had uncommitted changes), the market, the seeds, the sizes and the
pooled numbers. `count_looks` says how many times a (market, seed set) has been scored; the
README's goal table quotes it.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

LEDGER = Path(__file__).resolve().parent / "goal_ledger.jsonl"
REPO = Path(__file__).resolve().parent.parent


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """``{"commit": HEAD or None, "dirty": True when tracked files differ from it}`` of `repo`."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def append_look(record: dict[str, Any], ledger: Path = LEDGER) -> dict[str, Any]:
    """Append `record` (it must name ``market`` and ``seeds``) with the UTC time and git state; returns the line."""
    if "market" not in record or "seeds" not in record:
        raise ValueError("a ledger record names the market and the seeds it scored")
    line = {"utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **git_state(), **record,
            "seeds": sorted(int(s) for s in record["seeds"])}
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    return line


def read_looks(ledger: Path = LEDGER) -> list[dict[str, Any]]:
    """Every record of the ledger, oldest first (none when it does not exist yet)."""
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]


def count_looks(ledger: Path = LEDGER) -> Counter[tuple[str, tuple[int, ...]]]:
    """How many runs scored each (market, sorted seeds) on its test days."""
    return Counter((r["market"], tuple(sorted(r["seeds"]))) for r in read_looks(ledger))


def looks_at_seed(market: str, seed: int, ledger: Path = LEDGER) -> int:
    """How many runs scored `seed`'s test days of `market`, alone or with other seeds."""
    return sum(1 for r in read_looks(ledger) if r["market"] == market and int(seed) in r["seeds"])
