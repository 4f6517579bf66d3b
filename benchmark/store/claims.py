"""Which process owns a run: several ``run`` processes may share one results folder.

A claim names its owner by host, pid and the process's start time (``/proc/<pid>/stat``
field 22 on Linux, so a reused pid is not mistaken for the owner). A claim of a process on
this host that no longer runs (gone, a zombie, or its pid now another process) has
expired; a claim from another host (a results folder on a shared file system) cannot be
checked and expires ``FOREIGN_CLAIM_HOURS`` after it was made.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

FOREIGN_CLAIM_HOURS = 24.0


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None without one."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is absent)."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str

    @classmethod
    def me(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), start_time(os.getpid()))

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


def alive(owner: Owner, claimed_at: float) -> bool:
    """Whether the claim's owner may still be running (see the module docstring)."""
    if owner.host != socket.gethostname():
        return time.time() - claimed_at < FOREIGN_CLAIM_HOURS * 3600
    fields = _proc_stat(owner.pid)
    if fields is not None:
        return fields[0] != "Z" and (not owner.started or fields[19] == owner.started)
    if Path("/proc/self/stat").exists():
        return False  # /proc works here and the pid is gone
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    return True
