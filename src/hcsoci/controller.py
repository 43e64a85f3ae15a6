"""Who controls an object: a process named by its pid *and* its start time.

Every container row, VM row and hns transition records the process responsible
for releasing it.  A pid alone is not an identity (pids are recycled), so the
record keeps the start time from ``/proc/PID/stat`` too: a process is the one
recorded only if both match.  A leaf module: the store, gc, hns and the utility
VM all ask it, and it asks nobody.
"""

from __future__ import annotations

import os

__all__ = ["controller_alive", "controller_identity", "process_alive", "process_start_time"]


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``; None when it does not exist or
    has exited (a zombie waiting for its parent to reap it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # field 3: the state
        return None
    return int(fields[19])  # field 22 overall


def process_alive(pid: int, start_time: int) -> bool:
    """Whether the process recorded as (pid, start_time) still runs (both must be known)."""
    return pid > 0 and start_time != 0 and process_start_time(pid) == start_time


def controller_identity() -> tuple[int, int]:
    """(pid, start time) of this process, as recorded in a row it controls."""
    pid = os.getpid()
    return pid, process_start_time(pid) or 0


def controller_alive(pid: int, start_time: int) -> bool:
    """Whether the controller recorded as (pid, start_time) still runs.

    Pid 0 means handed over to the user: never garbage.  A start time of 0 (not
    known when recorded) accepts any process with that pid.
    """
    if pid <= 0:
        return True
    started = process_start_time(pid)
    return started is not None and (start_time == 0 or started == start_time)
