"""Retention: what `atft gc` (and the nightly's last step) removes under the work root, and what it keeps.

A daily panel gets a new fingerprint every night, so without this the work root only grows: a cache
(GBs) per night, a run folder per run, and the temp folders of builds that were killed. `collect`
keeps
- the last `keep_runs` run folders (by the UTC stamp their name starts with);
- every cache used in the last `cache_days` days: "used" is the mtime of the cache's `.last_used`
  stamp, touched by `open_cache` and by a cache hit (`mark_used`), else of its manifest (its build);
- every temp leftover touched in the last `tmp_hours` hours (a build may still be writing it);
- whatever a live lease protects, however old: the folder holding it and the folders it names.

A lease (`in_use`) is a file `<folder>/.lease-<host>-<pid>-<n>` holding the process's record
(`process_record.ProcessRecord`: host, boot, pid namespace, pid, start time). It is live while that
process runs (a reused pid or an earlier boot does not count), and a lease from another host (or pid
namespace), whose processes this one cannot see, while it is younger than `lease_max_age_hours`.
Removal renames first (`.gc-<name>-...`), then deletes: a half-deleted cache never looks like a cache,
and an interrupted gc leaves only `.gc-*` names, removed by the next one.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atft_core.errors import ConfigError
from atft_core.process_record import ProcessRecord
from atft_core.workroot import WorkRoot

log = logging.getLogger("atft_core.retention")

LAST_USED = ".last_used"  # hidden: not shared through S3 (s3.folders.run_files skips dot files), not in listings
LEASE_PREFIX = ".lease-"
GC_PREFIX = ".gc-"
RUN_NAME = re.compile(r"^\d{8}T\d{6}Z-")  # rundir.new_run_dir; other folders under runs/ (hpo/) are not runs
CACHE_MANIFEST = "manifest.json"  # data.cache.store.MANIFEST_FILE (not imported: that pulls in polars and pyarrow)
# Temp names each writer uses, per folder of the work root; a match older than tmp_hours is a leftover.
TEMP_PATTERNS: dict[str, tuple[str, ...]] = {
    "cache": (".tmp-*",  # data.cache.build._atomic: a cache build
              ".*.tmp",  # exchange.fetch_folder: a cache download
              ".*_exchange.json"),  # exchange.share_folder: the completion marker before its upload
    "runs": (".*_exchange.json",),
    "demo": ("*.tmp", "*.tmp.*"),  # flows.common / data.demo.generate.generate_demo: the panel and its oracle files
}

_DAY, _HOUR = 86400.0, 3600.0
_lease_numbers = itertools.count()  # two leases of one process on one folder are two files


@dataclass(frozen=True)
class RetentionConfig:
    """How much `collect` keeps. Checked on creation: a bad value is a ConfigError naming it."""

    keep_runs: int = 30  # run folders kept, newest first (leased ones are kept besides)
    cache_days: float = 14.0  # a cache unused for longer is removed
    tmp_hours: float = 24.0  # a temp leftover untouched for longer is removed
    lease_max_age_hours: float = 48.0  # a lease from another host protects this long

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.keep_runs, bool) or not isinstance(self.keep_runs, int) or self.keep_runs < 1:
            problems.append(f"keep_runs (--keep-runs) = {self.keep_runs!r}: must be an integer >= 1 (keeping none "
                            "would remove the run that just finished)")
        for name, unit in (("cache_days", "days"), ("tmp_hours", "hours"), ("lease_max_age_hours", "hours")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                problems.append(f"{name} (--{name.replace('_', '-')}) = {value!r}: must be a number of {unit} > 0")
        if problems:
            raise ConfigError(problems, hint="set it with the `atft gc` flag named or the nightly's retention "
                                             "parameters")

    @classmethod
    def parse(cls, **raw: Any) -> RetentionConfig:
        """From text (command-line flags); None keeps the default. Every bad value in one ConfigError."""
        values: dict[str, Any] = {}
        problems = []
        for name, text in raw.items():
            if text is None:
                continue
            kind = int if name == "keep_runs" else float
            try:
                values[name] = kind(text)
            except (TypeError, ValueError):
                problems.append(f"{name} (--{name.replace('_', '-')}) = {text!r}: must be "
                                f"{'an integer' if kind is int else 'a number'}")
        if problems:
            raise ConfigError(problems, hint="set it with the `atft gc` flag named")
        return cls(**values)


@dataclass(frozen=True)
class GcItem:
    """One thing `collect` looked at: a run folder, a cache, or a temp leftover."""

    path: Path
    kind: str  # "run", "cache", "temp"
    removed: bool  # in a dry run: would be removed
    reason: str
    bytes: int = 0


@dataclass
class GcReport:
    root: Path
    dry_run: bool
    items: list[GcItem] = field(default_factory=list)

    @property
    def removed(self) -> list[GcItem]:
        return [i for i in self.items if i.removed]

    @property
    def kept(self) -> list[GcItem]:
        return [i for i in self.items if not i.removed]

    @property
    def freed_bytes(self) -> int:
        """Bytes removed (in a dry run: that would be)."""
        return sum(i.bytes for i in self.removed)

    def lines(self) -> list[str]:
        head = f"gc under {self.root}" + (" (dry run: nothing removed)" if self.dry_run else "")
        verb = "would remove" if self.dry_run else "removed"
        rows = [f"  {verb if i.removed else 'kept'} {i.kind} {i.path.name}: {i.reason}"
                + (f" ({_human(i.bytes)})" if i.removed else "") for i in self.items]
        tail = (f"{'would free' if self.dry_run else 'freed'} {_human(self.freed_bytes)}: {len(self.removed)} "
                f"removed, {len(self.kept)} kept")
        return [head, *rows, tail]

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "dry_run": self.dry_run, "freed_bytes": self.freed_bytes,
                "items": [{"path": str(i.path), "kind": i.kind, "removed": i.removed, "reason": i.reason,
                           "bytes": i.bytes} for i in self.items]}


def mark_used(cache_path: str | Path) -> None:
    """Stamp a cache as used now (one utime). Never fails a run: a read-only cache just keeps its old stamp."""
    try:
        (Path(cache_path) / LAST_USED).touch()  # an utime, or a create for a cache from before the stamp
    except OSError as exc:
        log.debug("could not stamp %s as used: %s", cache_path, exc)


@contextmanager
def in_use(folder: str | Path, *, uses: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Protect `folder` (and the folders in `uses`, e.g. a run's cache) from gc while the block runs.

    Yields the lease file. A folder that is gone raises FileNotFoundError; one that cannot be written
    (a read-only mount) logs a warning and runs the block unprotected rather than failing the run.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot lease {folder}: it does not exist (removed by `atft gc`?); rebuild or "
                                "rerun what made it")
    path = folder / f"{LEASE_PREFIX}{_safe(socket.gethostname())}-{os.getpid()}-{next(_lease_numbers)}"
    record = {**ProcessRecord.current().to_dict(), "since": time.time(), "uses": [str(Path(u).resolve()) for u in uses]}
    try:
        path.write_text(json.dumps(record))
        written = True
    except OSError as exc:
        log.warning("could not write the lease %s (%s): `atft gc` may remove this folder while it is in use", path, exc)
        written = False
    try:
        yield path
    finally:
        if written:
            path.unlink(missing_ok=True)


def collect(root: WorkRoot, cfg: RetentionConfig | None = None, *, dry_run: bool = False,
            now: float | None = None) -> GcReport:
    """Remove what `cfg` does not keep under `root` (runs/, cache/, demo/); the report says what and why.

    `now` (epoch seconds, default the clock) is the time ages are measured against. Studies are never
    touched: a study is continued by the next night's run.
    """
    cfg = cfg or RetentionConfig()
    now = time.time() if now is None else now
    report = GcReport(root.home, dry_run)
    areas = {"runs": root.runs, "cache": root.cache, "demo": root.demo}
    entries = {name: _entries(folder) for name, folder in areas.items()}
    protected = _protected([p for ps in entries.values() for p in ps if p.is_dir()], now, cfg)

    def guard(check: Callable[[Path], str | None]) -> Callable[[Path], str | None]:
        """A keep reason: a live lease first (its own or named by another), then `check`."""
        def reason(path: Path) -> str | None:
            return protected.get(path.resolve()) or _own_lease(path, now, cfg) or check(path)
        return reason

    def recent(cache: Path) -> str | None:
        age = (now - _last_used(cache)) / _DAY
        return f"used {age:.1f} days ago (keeps {cfg.cache_days:g})" if age <= cfg.cache_days else None

    def fresh(temp: Path) -> str | None:
        age = (now - _newest_mtime(temp)) / _HOUR
        return f"written {age:.1f} h ago: a build may be writing it" if age <= cfg.tmp_hours else None

    # Run folders: the newest keep_runs by name (a UTC stamp), plus any a live lease protects.
    runs = sorted((p for p in entries["runs"] if p.is_dir() and RUN_NAME.match(p.name)), key=lambda p: p.name,
                  reverse=True)
    for i, run in enumerate(runs):
        keep = guard(lambda _p, i=i: f"one of the last {cfg.keep_runs} runs" if i < cfg.keep_runs else None)
        _decide(report, run, "run", keep, f"older than the last {cfg.keep_runs} runs", dry_run)

    # Caches: hidden folders are a build's or a gc's, never a cache, whatever they hold.
    for cache in (p for p in entries["cache"] if not p.name.startswith(".") and (p / CACHE_MANIFEST).is_file()):
        age = (now - _last_used(cache)) / _DAY
        _decide(report, cache, "cache", guard(recent), f"unused for {age:.1f} days (keeps {cfg.cache_days:g})",
                dry_run)

    for area, folder in areas.items():
        for temp in sorted({p for pattern in TEMP_PATTERNS[area] for p in folder.glob(pattern)
                            if not p.name.startswith(GC_PREFIX)}):
            age = (now - _newest_mtime(temp)) / _HOUR
            _decide(report, temp, "temp", guard(fresh), f"leftover untouched for {age:.1f} h (keeps "
                    f"{cfg.tmp_hours:g})", dry_run)
        for condemned in sorted(folder.glob(f"{GC_PREFIX}*")):
            _decide(report, condemned, "temp", lambda _p: None, "left by an interrupted gc", dry_run, rename=False)
    return report


def _decide(report: GcReport, path: Path, kind: str, keep: Callable[[Path], str | None], why: str, dry_run: bool,
            *, rename: bool = True) -> None:
    """Keep `path` if `keep` gives a reason, else remove it (rename, check again, delete)."""
    if path.is_symlink():
        report.items.append(GcItem(path, kind, False, "a symlink: gc removes only what it can see is its own"))
        return
    reason = keep(path)
    if reason:
        report.items.append(GcItem(path, kind, False, reason))
        return
    size = _size(path)
    if dry_run:
        report.items.append(GcItem(path, kind, True, why, size))
        return
    doomed = path
    if rename:
        doomed = path.with_name(f"{GC_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        try:
            path.rename(doomed)
        except OSError as exc:
            report.items.append(GcItem(path, kind, False, f"could not remove: {exc}"))
            return
        # A run may have leased or opened it between the check and the rename: look again, put it back.
        if (late := keep(doomed)) is not None:
            try:
                doomed.rename(path)
                report.items.append(GcItem(path, kind, False, f"{late} (seen while removing)"))
                return
            except OSError as exc:  # the name is taken again (a build remade the cache): this copy is no one's
                log.warning("could not put back %s after it became in use: %s", path, exc)
    try:
        if doomed.is_dir():
            shutil.rmtree(doomed)
        else:
            doomed.unlink(missing_ok=True)
    except OSError as exc:  # renamed already: the next gc finishes it
        report.items.append(GcItem(path, kind, True, f"{why}; partly removed ({exc}), the next gc finishes it", size))
        return
    report.items.append(GcItem(path, kind, True, why, size))


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass(frozen=True)
class _Lease:
    path: Path
    process: ProcessRecord
    uses: tuple[str, ...]

    def describe(self) -> str:
        return f"in use: lease of pid {self.process.pid} on {self.process.host or 'an unknown host'}"


def _protected(folders: list[Path], now: float, cfg: RetentionConfig) -> dict[Path, str]:
    """Folders (resolved) that a live lease inside any of `folders` names through `uses`."""
    out: dict[Path, str] = {}
    for folder in folders:
        for lease in _live_leases(folder, now, cfg):
            for used in lease.uses:
                out.setdefault(Path(used), f"{lease.describe()} in {folder.name}")
    return out


def _own_lease(folder: Path, now: float, cfg: RetentionConfig) -> str | None:
    live = _live_leases(folder, now, cfg) if folder.is_dir() else []
    return live[0].describe() if live else None


def _live_leases(folder: Path, now: float, cfg: RetentionConfig) -> list[_Lease]:
    live = []
    for path in folder.glob(f"{LEASE_PREFIX}*"):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue  # released meanwhile
        young = now - mtime < cfg.lease_max_age_hours * _HOUR
        try:
            rec = json.loads(path.read_text())
            lease = _Lease(path, ProcessRecord.from_dict(rec), tuple(rec.get("uses", ())))
        except (OSError, ValueError, TypeError, AttributeError):
            if young:  # unreadable (being written?): it protects, as a lease of another host would
                live.append(_Lease(path, ProcessRecord("", None, 0, None), ()))
            continue
        alive = lease.process.is_alive()
        if young if alive is None else alive:  # None: another host's or pid namespace's, judged by its age
            live.append(lease)
    return live


def _last_used(cache: Path) -> float:
    for name in (LAST_USED, CACHE_MANIFEST):  # a cache from before the stamp: its build time
        try:
            return (cache / name).stat().st_mtime
        except OSError:
            continue
    return cache.stat().st_mtime


def _newest_mtime(path: Path) -> float:
    """The newest mtime in a tree: a build writing into a file for hours keeps its temp folder fresh."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for base, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(base, name)).st_mtime)
                except OSError:
                    continue
    return newest


def _size(path: Path) -> int:
    """Bytes on disk (allocated blocks where the OS says, so a sparse grid counts what it holds)."""
    def one(p: str) -> int:
        try:
            st = os.lstat(p)
        except OSError:
            return 0
        return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size

    if not path.is_dir() or path.is_symlink():
        return one(str(path))
    return one(str(path)) + sum(one(os.path.join(base, n)) for base, dirs, files in os.walk(path)
                                for n in dirs + files)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} TB"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text) or "host"
