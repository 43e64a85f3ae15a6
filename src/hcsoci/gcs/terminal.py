"""Window sizes of pseudo-terminals: one implementation for the host and the guest agent.

A container's terminal is two ptys deep: runc in the foreground relays the
container's own pty to its stdio, which is the slave of a pty we hold.  A
resize of our master reaches the container only when runc, woken by
``SIGWINCH``, copies the size inward, while keystrokes go through another of
runc's goroutines: a key typed right after a resize can reach the process
before the new size does.  :func:`resize_held_terminal` sets the size on the
container process's own terminal as well, so a resize is complete when the
call returns, on every host.

The container process is not trusted: the descriptor it holds is opened
``O_PATH`` (no device ``open`` runs), proven to be a pty slave by its inode,
and only then reopened through that very inode; its pidfd, alive after the
open, proves the pid was not reused meanwhile.  Standard library only: it is
shipped into the guest beside the agent.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import struct
import termios

__all__ = ["resize_held_terminal", "set_window_size"]

_PTY_SLAVE_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR and its 7 successors


def set_window_size(fd: int, width: int, height: int) -> None:
    """Set the window size of the terminal ``fd`` (its foreground group gets ``SIGWINCH``)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def resize_held_terminal(pidfd: int, pid: int, width: int, height: int) -> bool:
    """Set the size of the pty slave that process ``pid`` has as stdin, stdout or stderr.

    ``pidfd`` refers to ``pid``.  False when the process holds no pty on those
    descriptors or is gone; the caller's outer resize still stands then.
    """
    for number in (0, 1, 2):
        try:
            handle = os.open(f"/proc/{pid}/fd/{number}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            info = os.fstat(handle)
            if not stat.S_ISCHR(info.st_mode) or os.major(info.st_rdev) not in _PTY_SLAVE_MAJORS:
                continue
            try:
                tty = os.open(
                    f"/proc/self/fd/{handle}",
                    os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC,
                )
            except OSError:
                continue
        finally:
            os.close(handle)
        try:
            if not _alive(pidfd):
                return False  # the pid may name another process by now: leave it be
            set_window_size(tty, width, height)
            return True
        except OSError:
            continue
        finally:
            os.close(tty)
    return False


def _alive(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return not poller.poll(0)
