"""The real ``runc`` under hcsoci-runc: found on ``PATH``, exec'd or spawned and waited for.

Commands that change nothing hcsoci records (``start``, ``kill``, ``exec``,
``state``, ``ps``...) *become* runc (``execv``): the engine's shim then
talks to runc itself, with its stdio, signals and exit status, at no cost but
this program's start-up.  ``create``, ``run`` and ``delete`` spawn runc and wait
for it, to record or release the container around it.  Descriptors are
inherited exactly as runc would have inherited them from the engine
(``--preserve-fds`` counts on that; runc closes the rest before the container
runs).
"""

from __future__ import annotations

import os
import sys

__all__ = ["RuncCommand", "find_runc"]

_FALLBACK = ("/usr/sbin/runc", "/usr/bin/runc", "/sbin/runc", "/bin/runc")


def find_runc() -> str:
    """``$HCSOCI_RUNC``, else ``runc`` on ``PATH`` (never this program under that name)."""
    chosen = os.environ.get("HCSOCI_RUNC", "")
    if chosen:
        return chosen
    ourselves = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    directories = os.environ.get("PATH", "").split(os.pathsep)
    for path in [os.path.join(d, "runc") for d in directories if d] + list(_FALLBACK):
        if os.access(path, os.X_OK) and os.path.realpath(path) != ourselves:
            return path
    raise FileNotFoundError("runc is not installed (not found in PATH): install the runc package")


class RuncCommand:
    """runc with the global flags of this call (``--root`` is runc's root under hcsoci's)."""

    def __init__(self, binary: str, global_args: list[str]) -> None:
        self.binary = binary
        self.global_args = global_args
        self._previous: dict[int, object] = {}

    def argv(self, command: str, args: list[str]) -> list[str]:
        """runc's argv for ``command`` with ``args`` (the engine's tokens, as given)."""
        return [self.binary, *self.global_args, command, *args]

    def become(self, command: str, args: list[str]) -> None:
        """Replace this process with runc (never returns)."""
        sys.stdout.flush()
        os.execv(self.binary, self.argv(command, args))

    def spawn(self, command: str, args: list[str], forward_signals: bool = False) -> int:
        """Start runc with this process's descriptors; its pid (see :meth:`wait`).

        With ``forward_signals`` (a foreground ``run``), from now until
        :meth:`wait` returns, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 and
        SIGWINCH reaching this process go to runc, which hands them to the
        container.
        """
        target: list[int] = []  # runc's pid, once there: a signal before it is held back
        held: list[int] = []
        if forward_signals:
            import signal  # only a foreground run forwards: enum and signal cost milliseconds

            def forward(number: int, _frame: object) -> None:
                if target:
                    _forward(target[0], number)
                else:
                    held.append(number)

            for sig in _FORWARDED:
                self._previous[sig] = signal.signal(sig, forward)
        pid = os.posix_spawn(self.binary, self.argv(command, args), os.environ)
        target.append(pid)
        for number in held:
            _forward(pid, number)
        return pid

    def wait(self, pid: int) -> int:
        """Wait for the runc :meth:`spawn` started; its exit status (128 + N for signal N)."""
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            if self._previous:
                import signal

                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)  # type: ignore[arg-type]
                self._previous.clear()
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    def call(self, command: str, args: list[str]) -> int:
        """Run runc to completion with this process's descriptors; its exit status."""
        return self.wait(self.spawn(command, args))


_FORWARDED = (2, 15, 1, 3, 10, 12, 28)
"""SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH (Linux numbers)."""


def _forward(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        return  # runc is gone already
