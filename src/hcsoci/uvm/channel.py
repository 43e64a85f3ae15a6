"""The wire between a VM's controller process and its clients: framed JSON over a unix socket.

A VM's controller (:mod:`hcsoci.uvm.service`) listens on
``<VM state dir>/controller.sock`` (0600, in the VM's 0700 state directory);
clients (:mod:`hcsoci.uvm.remote`) connect, send one request and read one
reply.  A frame is a 4-byte big-endian length and that many bytes of a JSON
object, at most :data:`MAX_FRAME` bytes.  A request may carry up to
:data:`MAX_FDS` descriptors (a process's stdin, stdout and stderr) as
``SCM_RIGHTS`` on its first byte.  Replies are ``{"ok": true, ...}`` or
``{"ok": false, "error": "one line", "kind": "not_found" | ...}``; a process
request's connection then carries one more frame, the process's end
(``{"event": "exit", "exit_code": N}``), and closes.

Both sides treat what they read as hostile: sizes are bounded, a frame must be
a JSON object, descriptors beyond the first :data:`MAX_FDS` are closed.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from hcsoci.errors import (
    AlreadyExistsError,
    HcsociError,
    InvalidArgumentError,
    NotFoundError,
    StateError,
)

__all__ = [
    "MAX_FDS",
    "MAX_FRAME",
    "SOCKET_NAME",
    "ChannelError",
    "bind_socket",
    "connect_socket",
    "error_kind",
    "error_from_reply",
    "recv_frame",
    "send_frame",
]

SOCKET_NAME = "controller.sock"
"""The controller's socket, in the VM's state directory."""

MAX_FRAME = 4 << 20
"""Largest frame either side accepts (an OCI spec with a long environment fits)."""

MAX_FDS = 3
"""Most descriptors a request may carry: stdin, stdout, stderr."""

_HEADER = struct.Struct(">I")
_SUN_PATH_MAX = 107


class ChannelError(HcsociError):
    """The other side sent something that is not a frame, or went away mid-frame."""


_KINDS: list[tuple[str, type[HcsociError]]] = [
    ("not_found", NotFoundError),
    ("already_exists", AlreadyExistsError),
    ("invalid", InvalidArgumentError),
    ("state", StateError),
]


def error_kind(err: BaseException) -> str:
    """The ``kind`` of a reply reporting ``err`` (the client raises the same family)."""
    for kind, cls in _KINDS:
        if isinstance(err, cls):
            return kind
    return "error"


def error_from_reply(reply: dict[str, Any]) -> HcsociError:
    """The exception a failed reply stands for."""
    message = str(reply.get("error") or "the controller gave no reason")
    kind = reply.get("kind")
    for name, cls in _KINDS:
        if kind == name:
            return cls(message)
    return HcsociError(message)


def _short_path(path: Path) -> tuple[str, int | None]:
    """A path ``bind``/``connect`` accept (at most 107 bytes), and a descriptor to close after.

    A long state root is reached through ``/proc/self/fd/N`` of its directory.
    """
    text = str(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def bind_socket(path: Path, backlog: int = 64) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 (a stale file there is replaced)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    address, fd = _short_path(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        old = os.umask(0o177)
        try:
            sock.bind(address)
        finally:
            os.umask(old)
        os.chmod(address, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock


def connect_socket(path: Path, timeout: float | None = None) -> socket.socket:
    """A connection to the unix socket at ``path`` (``OSError`` as ``connect`` raises it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    address, fd = _short_path(path)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock


def send_frame(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send ``message`` as one frame, with ``fds`` (at most :data:`MAX_FDS`) on its first byte."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise InvalidArgumentError(f"request of {len(body)} bytes exceeds {MAX_FRAME}")
    data = _HEADER.pack(len(body)) + body
    fds = fds or []
    if len(fds) > MAX_FDS:
        raise InvalidArgumentError(f"{len(fds)} descriptors: at most {MAX_FDS}")
    if fds:
        sent = sock.sendmsg(
            [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        )
        data = data[sent:]
    if data:
        sock.sendall(data)


def _recv_exactly(sock: socket.socket, size: int, fds: list[int] | None) -> bytes | None:
    """``size`` bytes (None at a clean end before the first); descriptors go to ``fds``."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        if fds is not None and got == 0:
            data, ancillary, flags, _ = sock.recvmsg(
                size, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
            )
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                    fds.extend(received)
            if flags & socket.MSG_CTRUNC:
                _close_all(fds)
                fds.clear()
                raise ChannelError(f"more than {MAX_FDS} descriptors sent")
        else:
            data = sock.recv(size - got)
        if not data:
            if got == 0:
                return None
            raise ChannelError("connection closed in the middle of a frame")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def recv_frame(
    sock: socket.socket, fds: list[int] | None = None, limit: int = MAX_FRAME
) -> dict[str, Any] | None:
    """The next frame's JSON object, or None when the peer closed cleanly between frames.

    With ``fds`` a list, descriptors sent with the frame are appended to it (the
    caller owns them, even when this raises).  A frame that is too long, not
    JSON or not an object raises :class:`ChannelError`.
    """
    header = _recv_exactly(sock, _HEADER.size, fds)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > limit:
        raise ChannelError(f"frame of {length} bytes exceeds the limit of {limit}")
    body = _recv_exactly(sock, length, None) if length else b""
    if body is None:
        raise ChannelError("connection closed in the middle of a frame")
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, nested too deep
        raise ChannelError(f"frame is not JSON: {err}") from None
    if not isinstance(message, dict):
        raise ChannelError(f"frame is a JSON {type(message).__name__}, not an object")
    return message
