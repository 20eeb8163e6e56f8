"""`atft gc`: the last N runs and the recently used caches stay, the rest goes, never what a live run uses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atft_core.data.cache import build as cache_build
from atft_core.data.cache import store as cache_store
from atft_core.errors import ConfigError
from atft_core.process_record import start_time
from atft_core.retention import (
    CACHE_MANIFEST,
    LAST_USED,
    LEASE_PREFIX,
    TEMP_PATTERNS,
    GcReport,
    RetentionConfig,
    _decide,
    collect,
    in_use,
)
from atft_core.workroot import WorkRoot
from flows.cli import main

DAY = 86400.0


@pytest.fixture
def root(tmp_path, monkeypatch) -> WorkRoot:
    monkeypatch.setenv("ATFT_HOME", str(tmp_path / "home"))
    return WorkRoot.from_env()


def _run(root: WorkRoot, day: int) -> Path:
    path = root.runs / f"202401{day:02d}T020000Z-dryrun-abcd{day:04d}"
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"day": day}))
    return path


def _cache(root: WorkRoot, name: str, used_days_ago: float, *, stamp: bool = True) -> Path:
    path = root.cache / name
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    (path / "grid.arrow").write_bytes(b"\0" * 10_000)
    when = time.time() - used_days_ago * DAY
    for f in ([path / LAST_USED] if stamp else []) + [path / "manifest.json", path / "grid.arrow"]:
        f.touch()
        os.utime(f, (when, when))
    return path


def _age(path: Path, hours: float) -> Path:
    when = time.time() - hours * 3600
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when))
    return path


def _snapshot(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*"))


def _fake_lease(folder: Path, *, host: str | None = None, pid: int, start: str | None, age_h: float = 0.0) -> Path:
    path = folder / f"{LEASE_PREFIX}test-{pid}"
    ns = os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else ""
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid_ns": ns, "pid": pid, "start": start,
                                "uses": []}))
    return _age(path, age_h)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_keeps_the_last_n_runs_and_removes_older_ones(root):
    runs = [_run(root, d) for d in range(1, 6)]
    hpo = root.runs / "hpo"  # not a run folder (the hpo command's output): never gc's
    hpo.mkdir()
    report = collect(root, RetentionConfig(keep_runs=2))
    assert [p.exists() for p in runs] == [False, False, False, True, True]
    assert hpo.exists()
    assert {i.path for i in report.removed} == set(runs[:3])
    assert report.freed_bytes > 0
    assert not list(root.runs.glob(".gc-*"))  # renamed, then deleted: nothing half-removed left


def test_cache_used_recently_is_kept_unused_for_k_days_is_removed(root):
    recent = _cache(root, "aaaa-1111", used_days_ago=3)
    stale = _cache(root, "bbbb-2222", used_days_ago=20)
    legacy_recent = _cache(root, "cccc-3333", used_days_ago=1, stamp=False)  # from before the stamp: its build time
    report = collect(root, RetentionConfig(cache_days=14))
    assert recent.exists() and legacy_recent.exists()
    assert not stale.exists()
    assert [i.path for i in report.removed] == [stale]
    assert "unused for 20.0 days" in report.removed[0].reason


def test_open_cache_and_a_cache_hit_stamp_the_cache_as_used(root, tmp_path):
    from tests.panels import make_panel, write

    panel = write(make_panel(), tmp_path / "p.parquet")
    built = cache_build.build_cache(panel, root.cache, progress=False)
    stamp = built.path / LAST_USED
    assert stamp.exists()  # born used
    _age(stamp, 30 * 24)
    assert collect(root, dry_run=True).removed  # 30 days unused: gc would remove it
    cache_store.open_cache(built.path)
    assert time.time() - stamp.stat().st_mtime < 60
    _age(stamp, 30 * 24)
    assert cache_build.build_cache(panel, root.cache, progress=False).hit
    assert time.time() - stamp.stat().st_mtime < 60
    assert not collect(root).removed


def test_a_leased_cache_and_run_are_never_removed_however_old(root):
    runs = [_run(root, d) for d in range(1, 5)]
    cache = _cache(root, "aaaa-1111", used_days_ago=90)
    named = _cache(root, "bbbb-2222", used_days_ago=90)
    with in_use(cache), in_use(runs[0], uses=[named]):
        report = collect(root, RetentionConfig(keep_runs=1))
        assert cache.exists() and named.exists() and runs[0].exists()
        assert not runs[1].exists() and not runs[2].exists() and runs[3].exists()
        reasons = {i.path: i.reason for i in report.kept}
        assert "in use" in reasons[cache] and "in use" in reasons[runs[0]] and "in use" in reasons[named]
    collect(root, RetentionConfig(keep_runs=1))  # the leases are released: now they go
    assert not cache.exists() and not named.exists() and not runs[0].exists()
    assert not list(root.cache.glob(".lease-*"))
    with pytest.raises(FileNotFoundError, match="removed by `atft gc`"), in_use(cache):
        pass


def test_a_folder_that_becomes_in_use_while_removed_is_put_back(root):
    """The check runs again after the rename: a run that leased or hit it meanwhile keeps it."""
    cache = _cache(root, "aaaa-1111", used_days_ago=90)
    answers = iter([None, "used 0.0 days ago"])  # unused when looked at, used once renamed
    report = GcReport(root.home, dry_run=False)
    _decide(report, cache, "cache", lambda _p: next(answers), "unused", dry_run=False)
    assert cache.exists() and (cache / "manifest.json").exists()
    assert not report.removed and "seen while removing" in report.kept[0].reason
    assert not list(root.cache.glob(".gc-*"))


def test_a_lease_of_a_dead_or_reused_pid_does_not_protect(root):
    dead = _cache(root, "aaaa-1111", used_days_ago=90)
    _fake_lease(dead, pid=_dead_pid(), start=None)
    reused = _cache(root, "bbbb-2222", used_days_ago=90)  # our pid, but another process's start time
    _fake_lease(reused, pid=os.getpid(), start="another-boot:1" if start_time(os.getpid()) else None)
    collect(root)
    assert not dead.exists()
    if start_time(os.getpid()):  # /proc: pid reuse is detected
        assert not reused.exists()


def test_a_lease_from_another_host_protects_until_its_max_age(root):
    young = _cache(root, "aaaa-1111", used_days_ago=90)
    _fake_lease(young, host="gpu-host-7", pid=1234, start="x:1", age_h=5)
    old = _cache(root, "bbbb-2222", used_days_ago=90)
    _fake_lease(old, host="gpu-host-7", pid=1234, start="x:1", age_h=72)
    collect(root, RetentionConfig(lease_max_age_hours=48))
    assert young.exists() and not old.exists()


def test_old_temp_leftovers_are_removed_fresh_ones_kept(root):
    root.cache.mkdir(parents=True)
    root.demo.mkdir(parents=True)
    root.runs.mkdir(parents=True)
    old_build = root.cache / ".tmp-pending-1a2b3c4d-4242-abcdef"
    old_build.mkdir()
    (old_build / "grid.arrow").write_bytes(b"\0" * 5000)
    _age(old_build, 30)
    writing = root.cache / ".tmp-pending-1a2b3c4d-4343-fedcba"  # folder made long ago, grid still being written
    writing.mkdir()
    (writing / "grid.arrow").write_bytes(b"\0" * 5000)
    _age(writing, 30)
    os.utime(writing / "grid.arrow")
    old_fetch = _age(_mk(root.cache / ".aaaa-1111.77.tmp"), 30)
    old_demo = _age(_mk(root.demo / ".demo.parquet.99.tmp", file=True), 30)
    old_oracle = _age(_mk(root.demo / ".demo.parquet.99.tmp.oracle.json", file=True), 30)
    fresh_demo = _mk(root.demo / ".demo.parquet.100.tmp", file=True)
    panel = _age(_mk(root.demo / "demo.parquet", file=True), 30 * 24)  # the demo panel itself stays
    marker = _age(_mk(root.runs / ".20240101T000000Z-dryrun-x.5_exchange.json", file=True), 30)
    condemned = _mk(root.cache / ".gc-cccc-3333-11-aaaaaa")  # an interrupted gc: removed whatever its age
    report = collect(root, RetentionConfig(tmp_hours=24))
    for p in (old_build, old_fetch, old_demo, old_oracle, marker, condemned):
        assert not p.exists(), p
    for p in (writing, fresh_demo, panel):
        assert p.exists(), p
    assert all(i.kind == "temp" for i in report.items)


def _mk(path: Path, *, file: bool = False) -> Path:
    if file:
        path.write_bytes(b"x" * 100)
    else:
        path.mkdir()
        (path / "part").write_bytes(b"x" * 100)
    return path


def test_dry_run_removes_nothing(root):
    for d in range(1, 5):
        _run(root, d)
    _cache(root, "aaaa-1111", used_days_ago=90)
    _age(_mk(root.cache / ".tmp-pending-x-1-abcdef"), 48)
    before = _snapshot(root.home)
    report = collect(root, RetentionConfig(keep_runs=1), dry_run=True)
    assert _snapshot(root.home) == before
    assert len(report.removed) == 5 and report.freed_bytes > 0
    assert "would free" in report.lines()[-1]


def test_cli_gc_prints_what_it_removed_and_kept(root, capsys):
    for d in range(1, 4):
        _run(root, d)
    _cache(root, "aaaa-1111", used_days_ago=90)
    assert main(["gc", "--keep-runs", "2", "--cache-days", "7"]) == 0
    out = capsys.readouterr().out
    assert "removed run 20240101T020000Z-dryrun-abcd0001: older than the last 2 runs" in out
    assert "kept run 20240103T020000Z-dryrun-abcd0003: one of the last 2 runs" in out
    assert "removed cache aaaa-1111: unused for 90.0 days" in out
    assert "freed " in out.splitlines()[-1]
    assert main(["gc", "--dry-run"]) == 0
    assert "nothing removed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--keep-runs", "-1"], "--keep-runs) = -1: must be an integer >= 1"),
    (["--keep-runs", "two"], "--keep-runs) = 'two': must be an integer"),
    (["--cache-days", "0"], "--cache-days) = 0.0: must be a number of days > 0"),
    (["--tmp-hours", "nan"], "--tmp-hours) = nan"),
])
def test_cli_gc_bad_value_exits_2_with_one_clear_line(root, capsys, argv, words):
    _run(root, 1)
    before = _snapshot(root.home)
    assert main(["gc", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(root.home) == before


def test_config_rejects_every_bad_value_at_once():
    with pytest.raises(ConfigError) as err:
        RetentionConfig(keep_runs=0, cache_days=-1, tmp_hours=True)
    assert len(err.value.problems) == 3


def test_gc_knows_the_names_the_cache_writers_use():
    assert cache_store.MANIFEST_FILE == CACHE_MANIFEST
    assert f"{cache_build._TMP_PREFIX}*" in TEMP_PATTERNS["cache"]
