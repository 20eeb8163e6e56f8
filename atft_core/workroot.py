"""One work root for everything a run makes: run folders, caches, the demo panel, HPO studies.

A deployment's flow run executes in a throwaway folder (a process worker without `working_dir`
makes a temporary one and the `git_clone` pull step clones into it), so a relative path there points
into a folder that is deleted when the run ends, and two flow runs (the cpu pipeline and its gpu
stage) never see the same one. Every path a run reads or writes is therefore made absolute here,
before it leaves the CLI or the flow:

- a path the user typed on the command line is relative to where they typed it (the CLI resolves
  it against its working folder, as any command-line tool does);
- a relative path that reaches a flow (a deployment parameter, `-p output_dir=runs`) is relative to
  the work root, never to the flow run's working folder;
- a path left out is the work root's default folder for it.

The root is `ATFT_HOME`, else `~/.local/share/atft` (XDG's data folder). It is read once, at the
edge (`WorkRoot.from_env` in the CLI and the flows), and passed down as a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "ATFT_HOME"
DEFAULT_HOME = "~/.local/share/atft"


@dataclass(frozen=True)
class WorkRoot:
    """`home` is absolute; the layout below it is fixed so that every host and every run agrees on it."""

    home: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkRoot:
        raw = (os.environ if env is None else env).get(ENV_HOME, "").strip() or DEFAULT_HOME
        home = Path(raw).expanduser()
        if not home.is_absolute():
            raise ValueError(f"{ENV_HOME}={raw!r} is relative: a deployment's flow runs in a throwaway folder, so "
                             f"the work root must be absolute (e.g. {ENV_HOME}=$HOME/.local/share/atft)")
        return cls(home.resolve())

    @property
    def runs(self) -> Path:
        """One folder per run (`atft_core.rundir`)."""
        return self.home / "runs"

    @property
    def cache(self) -> Path:
        """Arrow caches, one folder per input fingerprint and build parameters."""
        return self.home / "cache"

    @property
    def demo(self) -> Path:
        """The built-in demo panel, generated on first use."""
        return self.home / "demo"

    @property
    def studies(self) -> Path:
        """HPO study storages (`optuna.db`) that nightly runs continue."""
        return self.home / "studies"

    @property
    def registry(self) -> Path:
        """The champion, every model that was one, tomorrow's ranks and the live record (`atft_core.nightly`)."""
        return self.home / "registry"

    def resolve(self, path: str | Path | None, default: Path) -> Path:
        """`path` made absolute against this root (`default` when None or empty); `~` is expanded."""
        if path is None or str(path).strip() == "":
            return default
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.home / p).resolve()

    def resolve_data(self, data_path: str | None) -> str | None:
        """A panel path for a flow: `s3://` and absolute paths as given, a relative one under the root."""
        if not data_path or str(data_path).startswith("s3://"):
            return data_path
        return str(self.resolve(data_path, self.home))

    def resolve_storage(self, url: str | None) -> str | None:
        """An Optuna storage URL whose file (SQLite, journal) is made absolute against this root.

        `sqlite:///optuna.db` is relative to the process's folder in SQLAlchemy's reading: inside a
        deployment run that folder is deleted when the run ends, and the study with it.
        """
        if not url:
            return url
        for prefix in ("sqlite:///", "journal:"):
            if url.startswith(prefix):
                path = url[len(prefix):]
                if path and not path.startswith(("/", "${")) and path != ":memory:":
                    return prefix + str(self.resolve(path, self.studies))
        return url


def absolute(path: str | Path | None) -> str | None:
    """A path the user typed, made absolute against the current folder (None and `s3://` untouched)."""
    if path is None or str(path).startswith("s3://"):
        return None if path is None else str(path)
    return str(Path(path).expanduser().resolve())
