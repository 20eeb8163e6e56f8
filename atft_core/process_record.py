"""Which process wrote a record, and is it still alive? Shared by `atft gc`'s leases (`retention`) and a
journal-file study's worker records (`hpo.liveness`). Standard library only: `atft gc` must not pull in
optuna or prefect.

A process is named by host, boot id, pid namespace, pid and start time, because a pid alone does not
name one process for long:
- pids are reused: once the writer is gone the kernel gives its pid to the next process, and a bare pid
  check would then take that stranger for the writer, alive for ever. The start time (clock ticks since
  boot, field 22 of /proc/<pid>/stat) tells them apart: a reused pid has another start time.
- start times count from boot, so after a restart a new process may have the same pid *and* the same
  start time as one of the last boot. The boot id (/proc/sys/kernel/random/boot_id, new each boot) says
  the record is from an earlier boot, whose processes are all gone.
- a pid means something only in its own pid namespace: two containers may share a host name and a disk
  but not their pids, so a record from another namespace is not judged here.
A zombie (killed, not yet reaped by its parent) still has its pid and its start time but runs nothing:
it counts as dead.

Where there is no /proc (not Linux) only host and pid are recorded and checked: a reused pid then looks
alive, which keeps what the record protects (a lease's folder, a RUNNING trial) rather than losing it.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessRecord:
    """One process of one host, as it can be recognised later by another process of that host."""

    host: str
    boot_id: str | None  # None: no /proc where it was recorded
    pid: int
    start_time: int | None  # clock ticks since boot; None: no /proc where it was recorded
    pid_ns: str | None = None  # e.g. "pid:[4026531836]"; None: unknown (not recorded, or no /proc)

    @classmethod
    def current(cls) -> ProcessRecord:
        """This process."""
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        """Process `pid` of this host (its start time None if it is gone)."""
        return cls(socket.gethostname(), boot_id(), pid, start_time(pid), pid_namespace())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {"host", "boot", "pid", "start", "pid_ns"} (the keys journal-file studies already hold)."""
        return {"host": self.host, "boot": self.boot_id, "pid": self.pid, "start": self.start_time,
                "pid_ns": self.pid_ns}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ProcessRecord:
        """Read `to_dict`'s form, with missing fields as unknown; also the older lease form, whose "start" is
        "<boot id>:<ticks>" and which has no "boot". ValueError/TypeError when a field is malformed."""
        boot, start = record.get("boot"), record.get("start")
        if isinstance(start, str):  # an older lease: "<boot id>:<ticks>"
            boot_part, _, ticks = start.rpartition(":")
            boot, start = boot if boot is not None else boot_part, ticks
        return cls(host=str(record.get("host", "")), boot_id=None if boot is None else str(boot),
                   pid=int(record.get("pid", 0)), start_time=None if start is None else int(start),
                   pid_ns=record.get("pid_ns") or None)

    def is_alive(self) -> bool | None:
        """True while the recorded process runs; False once it is gone (exited, a zombie, an earlier boot, its
        pid now another process's); None when this process cannot tell: the record is from another host or
        another pid namespace, whose processes it cannot see."""
        if self.host != socket.gethostname():
            return None
        # Another pid namespace (container) shares our host name but not our pids. A record without one
        # (written before it was recorded) is judged on host and boot alone.
        if self.pid_ns is not None and self.pid_ns != pid_namespace():
            return None
        if self.boot_id != boot_id():
            return False  # the host restarted since: every process of that boot is gone
        if self.pid <= 0:
            return False  # no process (and os.kill(0, ...) would signal our own process group)
        stat = _stat(self.pid)
        if stat is None:  # gone, or no /proc, or hidden from us (hidepid): what the pid alone says
            return _pid_exists(self.pid)
        state, ticks = stat
        if state in ("Z", "X"):
            return False  # killed, not yet reaped: it runs nothing
        return self.start_time is None or ticks == self.start_time  # another start time: a reused pid

    def describe(self) -> str:
        return f"process {self.pid} on {self.host or 'an unknown host'}"


def start_time(pid: int) -> int | None:
    """Start of process `pid` in clock ticks since boot; None when it is gone or there is no /proc."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


@functools.cache
def boot_id() -> str | None:
    """This boot's id (new each boot); None where there is no /proc."""
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> str | None:
    """This process's pid namespace (e.g. "pid:[4026531836]"); None where it cannot be read."""
    try:
        return os.readlink(_PROC / "self/ns/pid") or None
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """State (field 3) and start time (field 22) of /proc/<pid>/stat; None when it cannot be read."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # field 2, the command name, may hold spaces and ')'
    return fields[0], int(fields[19])  # fields[0] is field 3


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
