"""Pipe ends that another thread can close while a read or write waits on them.

A plain blocking file object over a pipe cannot be cut: closing it from
another thread does not wake a ``read()`` blocked in the kernel, which then
waits for the far end (a grandchild that inherited a process's stdout and
lives on, say) however long that takes.  :class:`PipeEnd` is what every
process host on this machine hands :class:`hcsoci.Cmd` as a process's stdio
instead: its descriptor is non-blocking, and every wait polls an eventfd
beside it that :meth:`PipeEnd.close` signals, so ``close()`` from any thread
ends a pending read or write at once (it raises ``ValueError``, like any I/O
on a closed file).  That is how ``Process.close()`` cuts the relays once
``copy_after_exit_timeout`` is up, on every host.

It works on a pseudo-terminal's master too: ``eio_is_eof`` turns the ``EIO``
a master reads once the last holder of its slave side closed it into end of
file.
"""

from __future__ import annotations

import errno
import io
import os
import select
import threading
from typing import Any

__all__ = ["PipeEnd"]


class PipeEnd(io.RawIOBase):
    """One end of a process's stdio pipe (or its terminal's master), closable from any thread.

    ``fd`` becomes this object's (it is set non-blocking, which a pseudo-terminal
    master shares with its duplicates, and closed with it); ``writable`` says
    which direction it is for and ``name`` names the stream in errors.
    :meth:`close` cuts a blocked :meth:`readinto`, :meth:`write` or
    :meth:`wait_ready` of another thread with ``ValueError``; the descriptor
    itself is closed once no call is using it any more, so its number cannot
    be reused under a call in progress.
    """

    def __init__(self, fd: int, *, writable: bool, name: str, eio_is_eof: bool = False) -> None:
        super().__init__()
        self._cancel = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        os.set_blocking(fd, False)
        self._fd = fd
        self._writable = writable
        self._eio_is_eof = eio_is_eof
        self._events = select.POLLOUT if writable else select.POLLIN
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False
        self.name = name

    def fileno(self) -> int:
        """The descriptor (non-blocking); ValueError once closed."""
        if self._closing:
            raise ValueError(f"I/O operation on closed {self.name} pipe")
        return self._fd

    def readable(self) -> bool:
        """Whether this is a read end."""
        return not self._writable

    def writable(self) -> bool:
        """Whether this is a write end."""
        return self._writable

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer``, waiting for data; 0 at end of file."""
        self._enter()
        try:
            while True:
                try:
                    return os.readv(self._fd, [buffer])
                except BlockingIOError:
                    self._wait()
                except OSError as err:
                    if err.errno == errno.EIO and self._eio_is_eof:
                        return 0
                    raise
        finally:
            self._exit()

    def write(self, data: Any) -> int:
        """Write some of ``data``, waiting for room; the number of bytes written."""
        self._enter()
        try:
            while True:
                try:
                    return os.write(self._fd, data)
                except BlockingIOError:
                    self._wait()
        finally:
            self._exit()

    def wait_ready(self) -> None:
        """Block until the pipe can be read (or written); ValueError once closed."""
        self._enter()
        try:
            self._wait()
        finally:
            self._exit()

    def close(self) -> None:
        """Close, cutting every call that waits on this end in another thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            os.eventfd_write(self._cancel, 1)
            last = self._users == 0
        if last:
            self._release()
        super().close()

    def _enter(self) -> None:
        with self._lock:
            if self._closing:
                raise ValueError(f"I/O operation on closed {self.name} pipe")
            self._users += 1

    def _exit(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._release()

    def _release(self) -> None:
        os.close(self._fd)
        os.close(self._cancel)

    def _wait(self) -> None:
        poller = select.poll()
        poller.register(self._fd, self._events)
        poller.register(self._cancel, select.POLLIN)
        for fd, _ in poller.poll():
            if fd == self._cancel:
                raise ValueError(f"I/O operation on closed {self.name} pipe")
        # POLLHUP / POLLERR count as ready: the next read or write reports them.
