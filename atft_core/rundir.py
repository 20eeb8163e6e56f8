"""One folder per run: `<output_dir>/<UTC timestamp>-<mode>-<short run id>/`, never reused.

A nightly job that overwrote yesterday's folder would destroy the only evidence of what changed, so
the folder is created with `exist_ok=False` and a collision (same second, same id) gets a suffix.
The name sorts by time and carries the orchestrator's run id, so a run in the UI leads to its files
and a folder leads back to its run. Nothing here knows about Prefect: a run id is just a string.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

_SAFE = re.compile(r"[^A-Za-z0-9]+")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def short_id(run_id: str, length: int = 8) -> str:
    """First characters of a run id (a UUID's first group), filesystem-safe."""
    return _SAFE.sub("", str(run_id))[:length] or "local"


def new_run_dir(output_dir: str | Path, mode: str, run_id: str, now: datetime | None = None) -> Path:
    """Create and return a fresh folder for one run; never returns an existing folder."""
    root = Path(output_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)
    base = f"{stamp}-{_SAFE.sub('-', mode).strip('-') or 'run'}-{short_id(run_id)}"
    for n in range(1000):
        path = root / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new run folder under {root} for {base}")


def find_run_dir(output_dir: str | Path, run_id: str, mode: str | None = None) -> Path | None:
    """The folder a run created (by its id, and its mode when given), or None when it never got that far.

    A nightly run makes two folders with its id: its own and its challenger's (mode "challenger").
    """
    root = Path(output_dir).expanduser()
    if not root.is_dir():
        return None
    sid = short_id(run_id)
    kind = _SAFE.sub("-", mode).strip("-") if mode else r"[^-]+"
    matches = sorted(p for p in root.iterdir() if p.is_dir() and re.search(rf"-{kind}-{sid}(-\d+)?$", p.name))
    return matches[-1] if matches else None


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically (temp file + rename): a reader on another worker never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def json_safe(o: Any) -> Any:
    """JSON has no NaN: non-finite numbers become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o
