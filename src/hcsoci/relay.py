"""The copy loops behind :class:`hcsoci.Cmd`'s standard IO relays.

:func:`copy` moves bytes from a reader to a writer until end of file, like Go's
``io.Copy``.  When both ends are real file descriptors the data never passes
through Python objects: ``os.splice`` when either end is a pipe, ``os.sendfile``
when the source is a regular file, and one exception measured on this project's
kernels: from a pipe into a regular file, ``os.readv`` into one reused buffer
and ``os.write`` from it (``splice`` into the page cache cost 40% more CPU and
ran 10-15% slower; see ``docs/cmd.md``).  Anything else (``io.BytesIO``, a
pseudo-terminal, any object with ``read``/``write``) goes through a reused
buffer too, but by way of the objects' own methods.  A source that may block
(a terminal, a socket) is never spliced into a pipe: the splice would hold the
pipe's lock while it waits, and the pipe's reader would hang in the kernel,
unkillable.

A stream may offer ``wait_ready()``: block until its descriptor is ready for
its one direction, or raise once the stream is closed from another thread.
The relay calls it instead of polling the descriptor itself, so that a process
host can cut a relay that waits on a pipe nobody will ever write to or close
(see ``Cmd.copy_after_exit_timeout``).  Streams that are not ready and have no
``wait_ready`` are polled.

A read that fails with ``EIO`` on a terminal is end of file: a pseudo-terminal
master reads ``EIO`` once the last holder of its slave side closed it.

:func:`handover_fd` tells a process host which caller streams need no relay at
all: their descriptor can become the process's own stdio, as ``subprocess``
does with a file object.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import socket
import stat
from typing import Protocol, TypeGuard

from hcsoci.errors import InvalidArgumentError

__all__ = ["Progress", "Reader", "Writer", "copy", "handover_fd"]

_CHUNK = 1 << 20
"""Largest move per call: the size LocalHost gives its pipes."""

_FIRST_CHUNK = 64 * 1024
"""Buffer a pipe-to-file copy starts with; it grows to _CHUNK once a read fills it."""

_BUFFER_SIZE = 256 * 1024
"""Buffer of the copy loop that goes through Python."""

# Errors that mean "this pair of descriptors cannot be spliced or sent": carry
# on with the buffered loop (which also turns a pseudo-terminal's EIO into EOF).
_NO_ZERO_COPY = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EIO})


class Reader(Protocol):
    """Anything with a binary ``read``: a file, a pipe, ``io.BytesIO``, a socket file."""

    def read(self, size: int = -1, /) -> bytes | None: ...


class Writer(Protocol):
    """Anything with a binary ``write``."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None: ...


# Errors of a splice or sendfile that can only come from the output side.
_SINK_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class Progress:
    """How far a :func:`copy` got (readable after it raised).

    ``bytes`` counts the bytes moved; ``sink_failed`` says whether the error
    :func:`copy` raised came from writing to ``dst`` (its reader went away, a
    full disk) rather than from reading ``src``.
    """

    __slots__ = ("bytes", "sink_failed")

    def __init__(self) -> None:
        self.bytes = 0
        self.sink_failed = False


def copy(dst: Writer, src: Reader, progress: Progress | None = None) -> int:
    """Copy ``src`` to ``dst`` until end of file; return the number of bytes moved.

    ``dst`` is flushed before descriptor-level writes (so nothing it buffered
    is overtaken) and at the end.  Errors propagate; ``progress``, if given,
    counts the bytes moved until then.
    """
    progress = progress if progress is not None else Progress()
    src_fd = _fileno(src)
    dst_fd = _fileno(dst)
    if src_fd is not None and dst_fd is not None:
        finished = _copy_descriptors(dst, dst_fd, src, src_fd, progress)
        if finished:
            return progress.bytes
    _copy_buffered(dst, src, progress)
    try:
        _flush(dst)
    except Exception:
        progress.sink_failed = True
        raise
    return progress.bytes


def take_descriptor(fd: int, what: str) -> int:
    """A close-on-exec copy of a caller's descriptor, numbered above 2, for a child's stdio.

    Above 2 so that the child's 0-2 can be set from the copies in any order.
    Raises :class:`~hcsoci.errors.InvalidArgumentError` naming ``what`` when
    ``fd`` is not open.
    """
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError as err:
        raise InvalidArgumentError(f"{what}: descriptor {fd}: {err.strerror}") from err


def handover_fd(stream: object, *, reading: bool) -> int | None:
    """The descriptor a process could use as its own stdio instead of a relay of ``stream``.

    None when there is none to give: no working ``fileno()`` (``io.BytesIO``),
    a descriptor in non-blocking mode (the process would read or write
    ``EAGAIN``), or a seekable buffered reader holding bytes read ahead of its
    descriptor's position (the process would miss them).  A writer is flushed
    first, so nothing it buffered is overtaken by the process's output.  As with
    ``subprocess``, what a buffered reader of a pipe holds ahead is not seen.
    """
    if isinstance(stream, io.TextIOBase):
        return None
    fd = _fileno(stream)
    if fd is None:
        return None
    try:
        if not os.get_blocking(fd):
            return None
        if not reading:
            _flush(stream)
        elif _reads_ahead(stream) and os.lseek(fd, 0, os.SEEK_CUR) != stream.tell():
            return None  # bytes read ahead: the relay sends those first
    except OSError:
        return None
    return fd


def _reads_ahead(stream: object) -> TypeGuard[io.BufferedReader | io.BufferedRandom]:
    """Whether ``stream`` is a seekable buffered reader (one that can hold bytes read ahead)."""
    return isinstance(stream, io.BufferedReader | io.BufferedRandom) and stream.seekable()


def _fileno(stream: object) -> int | None:
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _flush(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


def _copy_descriptors(
    dst: Writer, dst_fd: int, src: Reader, src_fd: int, progress: Progress
) -> bool:
    """Move bytes descriptor to descriptor.  Returns whether end of file was reached."""
    src_mode = os.fstat(src_fd).st_mode
    dst_mode = os.fstat(dst_fd).st_mode
    move: _Move
    if stat.S_ISFIFO(src_mode) and stat.S_ISREG(dst_mode):
        move = _ReadWrite()
    elif stat.S_ISFIFO(src_mode) or (stat.S_ISREG(src_mode) and stat.S_ISFIFO(dst_mode)):
        move = _splice
    elif stat.S_ISREG(src_mode):
        move = _sendfile
    else:
        # Not spliced into a pipe: a splice holds the pipe's lock while it waits
        # for the source (a terminal, a socket), so the pipe's reader would
        # hang, unkillable, in the kernel until input came.
        return False
    pending = _buffered_input(src, src_fd)
    if pending is None:
        return False
    try:
        _flush(dst)
        if pending:
            _write_all_fd(dst, dst_fd, pending)
    except Exception:
        progress.sink_failed = True
        raise
    progress.bytes += len(pending)
    # Private duplicates: the streams may be closed by another thread at any
    # time, and a closed descriptor number can be reused by an unrelated open.
    in_fd = os.dup(src_fd)
    try:
        out_fd = os.dup(dst_fd)
    except BaseException:
        os.close(in_fd)
        raise
    try:
        while True:
            # The private duplicates outlive a close of the streams: without this
            # check a writer that never pauses would keep the copy going forever.
            if _is_closed(src) or _is_closed(dst):
                raise ValueError("I/O operation on closed file")
            try:
                n = move(in_fd, out_fd)
            except BlockingIOError:
                _wait(src, in_fd, select.POLLIN)
                if not isinstance(move, _ReadWrite):  # its file write never blocks
                    _wait(dst, out_fd, select.POLLOUT)
                continue
            except OSError as err:
                # A failed write after readv has lost what it read: no fallback then.
                if isinstance(move, _ReadWrite):
                    progress.sink_failed = move.writing
                    raise
                if err.errno in _NO_ZERO_COPY:
                    return False
                progress.sink_failed = err.errno in _SINK_ERRNOS
                raise
            if n == 0:
                return True
            progress.bytes += n
    finally:
        os.close(in_fd)
        os.close(out_fd)


def _is_closed(stream: object) -> bool:
    return getattr(stream, "closed", False) is True


class _Move(Protocol):
    """Move up to one chunk from ``in_fd`` to ``out_fd``; 0 at end of file.

    BlockingIOError when nothing could be moved yet.
    """

    def __call__(self, in_fd: int, out_fd: int, /) -> int: ...


def _splice(in_fd: int, out_fd: int) -> int:
    return os.splice(in_fd, out_fd, _CHUNK, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)


def _sendfile(in_fd: int, out_fd: int) -> int:
    return os.sendfile(out_fd, in_fd, None, _CHUNK)


class _ReadWrite:
    """Pipe to regular file through one reused buffer: no bytes object per chunk.

    A regular file never makes ``write`` block, so each call writes all it read.
    """

    def __init__(self) -> None:
        self._buffer = memoryview(bytearray(_FIRST_CHUNK))
        self.writing = False
        """Whether the last call failed (or is) in its write."""

    def __call__(self, in_fd: int, out_fd: int) -> int:
        n = os.readv(in_fd, [self._buffer])
        view = self._buffer[:n]
        self.writing = True
        while view:
            view = view[os.write(out_fd, view) :]
        self.writing = False
        if n == len(self._buffer) < _CHUNK:
            self._buffer = memoryview(bytearray(_CHUNK))
        return n


def _buffered_input(src: object, fd: int) -> bytes | None:
    """What a buffered reader holds ahead of its descriptor's position.

    None when that cannot be known (a buffered pipe): the caller must read
    through the object then.
    """
    if isinstance(src, io.TextIOBase):
        return None
    if isinstance(src, io.BufferedReader | io.BufferedRandom):
        if not src.seekable():
            return None
        ahead = os.lseek(fd, 0, os.SEEK_CUR) - src.tell()
        return src.read(ahead) if ahead > 0 else b""
    if isinstance(src, io.RawIOBase | socket.socket):
        return b""
    return None  # unknown wrapper: it may buffer


def _write_all_fd(dst: object, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            _wait(dst, fd, select.POLLOUT)
            continue
        view = view[n:]


def _wait(stream: object, fd: int, events: int) -> None:
    wait_ready = getattr(stream, "wait_ready", None)
    if wait_ready is not None:
        wait_ready()
        return
    poller = select.poll()
    poller.register(fd, events)
    poller.poll()


def _copy_buffered(dst: Writer, src: Reader, progress: Progress) -> None:
    # Writers outside the io hierarchy may keep what they are given: hand them
    # bytes of their own, not a view of a buffer that is about to be reused.
    reuse_buffer = isinstance(dst, io.IOBase)
    readinto = getattr(src, "readinto1", None) or getattr(src, "readinto", None)
    if readinto is not None:
        buffer = memoryview(bytearray(_BUFFER_SIZE))
        while True:
            try:
                n = readinto(buffer)
            except OSError as err:
                if _end_of_terminal(src, err):
                    return
                raise
            if n is None:  # a non-blocking raw stream with nothing to read
                _wait_stream(src, select.POLLIN)
                continue
            if n == 0:
                return
            _write_all(dst, buffer[:n] if reuse_buffer else bytes(buffer[:n]), progress)
            progress.bytes += n
    read = getattr(src, "read1", None) or src.read
    while True:
        try:
            data = read(_BUFFER_SIZE)
        except OSError as err:
            if _end_of_terminal(src, err):
                return
            raise
        if data is None:
            _wait_stream(src, select.POLLIN)
            continue
        if not data:
            return
        _write_all(dst, data, progress)
        progress.bytes += len(data)


def _end_of_terminal(src: object, err: OSError) -> bool:
    """Whether ``err`` from reading ``src`` is a terminal's end: EIO on a tty."""
    if err.errno != errno.EIO:
        return False
    fd = _fileno(src)
    return fd is not None and os.isatty(fd)


def _write_all(dst: Writer, data: bytes | memoryview, progress: Progress) -> None:
    # For raw streams None means "would block"; other writers return None for "all done".
    raw = isinstance(dst, io.RawIOBase)
    try:
        while True:
            n = dst.write(data)
            if n is None:
                if not raw:
                    return
                _wait_stream(dst, select.POLLOUT)
                continue
            if n >= len(data):
                return
            data = memoryview(data)[n:]
    except Exception:
        progress.sink_failed = True
        raise


def _wait_stream(stream: object, events: int) -> None:
    fd = _fileno(stream)
    if fd is None:
        raise BlockingIOError(errno.EAGAIN, "stream would block and has no descriptor to poll")
    _wait(stream, fd, events)
