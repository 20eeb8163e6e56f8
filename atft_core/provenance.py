"""Which code and which libraries produced a result: written into run.json and stage.json.

A worker clones the branch's last commit (prefect.yaml's git_clone step), so "the code" is a commit,
not a folder: a folder in a deleted temporary clone says nothing a year later.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("torch", "numpy", "polars", "pyarrow", "optuna", "prefect", "lightgbm", "boto3")
_CHECKOUT = Path(__file__).resolve().parents[1]


def code_version(checkout: Path = _CHECKOUT) -> dict[str, Any]:
    """{"commit", "dirty", "path"} of the checkout this code runs from; commit None outside git."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "path": str(checkout)}


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the libraries whose behaviour changes results (None when missing)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
