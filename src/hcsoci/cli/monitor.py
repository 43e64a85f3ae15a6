"""The monitor of a background container: it keeps the init's exit code.

A container's init runs under ``runc run`` in the foreground, and only runc's
parent learns how it ended.  ``hcsoci start`` and ``hcsoci run -d`` return at
once, so the init gets a parent that stays: this command forks a *monitor*
(in a session of its own, its stdio on ``/dev/null``), which starts the init
(output to the container's log), reports "started" or the one-line error
through a pipe, waits for the init and writes its exit code to
``<bundle>/exit-code`` -- what ``state``, ``ps -a``, ``wait`` and ``stop``
read, as containerd's shim keeps it for docker.  A foreground ``run`` without
``--rm`` writes the same file itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

from hcsoci import context
from hcsoci.container import Container, open_container
from hcsoci.errors import HcsociError, StateError

__all__ = ["EXIT_CODE_FILE", "record_exit_code", "recorded_exit_code", "start_monitored"]

EXIT_CODE_FILE = "exit-code"
"""The file in the bundle holding the init's exit code once it exited."""


def record_exit_code(container: Container, code: int | None) -> None:
    """Write ``code`` (``-1`` when unknown) to the container's exit-code file, atomically."""
    path = container.bundle / EXIT_CODE_FILE
    staging = path.with_name(f".{EXIT_CODE_FILE}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):  # the bundle is gone: released already
        staging.write_text(f"{-1 if code is None else code}\n")
        os.replace(staging, path)


def recorded_exit_code(container: Container) -> int | None:
    """The init's exit code as recorded, or None (still running, or never recorded)."""
    try:
        text = (container.bundle / EXIT_CODE_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def wait_recorded(container: Container, timeout: float | None = None) -> int | None:
    """Wait for the init to exit (``timeout`` seconds at most), then for its recorded code.

    None when the init still runs after ``timeout``.  A code never recorded (no
    monitor: the container was started by another program) is ``-1``.
    """
    if not _wait_init(container, timeout):
        return None
    deadline = time.monotonic() + 10.0  # the monitor writes it as runc returns
    while (code := recorded_exit_code(container)) is None:
        if time.monotonic() > deadline:
            return -1
        time.sleep(0.02)
    return code


def _wait_init(container: Container, timeout: float | None) -> bool:
    pid = container.properties(context.background()).init_pid
    if pid == 0:
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(pidfd)


def _host_container(container_id: str) -> Container:
    container = open_container(container_id)
    if not isinstance(container, Container):
        container.close()
        raise StateError(f"container {container_id}: in a utility VM, its controller runs it")
    return container


def start_monitored(container_id: str) -> None:
    """Start a created container's init under a monitor; returns once it runs.

    Raises :class:`~hcsoci.HcsociError` with the start's error.
    """
    container = _host_container(container_id)
    try:
        container.state_type().check_start(container_id)
    finally:
        container.close()
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the monitor
        os.close(read_end)
        _monitor(container_id, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode(errors="replace")
    if report != "started":
        os.waitpid(pid, 0)
        raise HcsociError(report or f"container {container_id}: its monitor died")


def _monitor(container_id: str, report: int) -> None:
    status = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        container = _host_container(container_id)
        try:
            container.start(context.background())
        except BaseException as err:
            os.write(report, " ".join(str(err).split()).encode() or type(err).__name__.encode())
            raise
        os.write(report, b"started")
        os.close(report)
        try:
            container.wait()
            record_exit_code(container, container.init_exit_code())
        finally:
            container.close()
        status = 0
    except BaseException:  # nothing to report to: the command that forked us has gone
        pass
    finally:
        os._exit(status)
