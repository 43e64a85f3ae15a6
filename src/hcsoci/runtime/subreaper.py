"""Detached runtime launches, and the one subreaper process that reaps them.

A runtime in the foreground (``runc run``, ``runc exec``) copies its process's
stdio through pipes of its own; only a detached runtime (``--detach``) hands
its own descriptors down to the process, so that a caller's file, pipe or
``/dev/null`` becomes the process's stdout with no copy at all, as
``subprocess`` does.  A detached runtime exits once the process runs, and the
orphaned process is reparented to the nearest *child subreaper*: without one,
to init, and its exit status would be lost.

Making the caller's own process a subreaper would make every orphan of every
child of it ours to reap, behind the back of whatever else runs there.  So one
small process per client process, started on first use and ending with it,
is the subreaper (:mod:`hcsoci.runtime.subreaper_server`): it spawns the
detached runtime with the descriptors it was sent, reaps it and the process it
leaves behind, and sends back the process's pid with a pidfd opened while the
process was its unreaped child (so the pid cannot have been reused) and, later,
its exit code.  This module is the client: :func:`default_subreaper`.

Replies are read by whichever waiting thread gets there first (leader and
followers on one condition), so the client keeps no thread of its own.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hcsoci.errors import HcsociError, StateError

__all__ = ["LaunchFailed", "Launched", "Subreaper", "SubreaperLost", "default_subreaper"]

_SERVER = Path(__file__).with_name("subreaper_server.py")
_MAX_MESSAGE = 1 << 16


class LaunchFailed(HcsociError):
    """The detached runtime exited non-zero (its ``--log`` says why) or could not run."""

    def __init__(self, code: int, error: str) -> None:
        super().__init__(error or f"exited with status {code}")
        self.code = code


class SubreaperLost(HcsociError):
    """The subreaper process ended while a process it reaps still ran: its exit is unknown."""


@dataclass
class Launched:
    """A process a detached runtime started; ``pidfd`` (ours to close) is None if it is gone."""

    token: str
    pid: int
    pidfd: int | None


@dataclass
class _Slot:
    pid: int = 0
    pidfd: int | None = None
    failed: int | None = None
    error: str = ""
    exited: int | None = None
    lost: bool = False
    abandoned: bool = False  # nobody waits for the launch any more: kill what starts
    forgotten: bool = False  # nobody waits for the exit any more: drop it when it comes

    @property
    def ended(self) -> bool:
        """Nothing more will come for it: the runtime failed, the process was reaped."""
        return self.failed is not None or self.exited is not None


class Subreaper:
    """The client of one subreaper process (started on first use, again after a fork)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._reading = False
        self._slots: dict[str, _Slot] = {}

    def start(self) -> None:
        """Start the subreaper process now, unless it runs already."""
        with self._cond:
            self._connect()

    def launch(self, argv: list[str], pid_file: Path, fds: tuple[int, int, int]) -> Launched:
        """Run ``argv`` (a detached runtime writing ``pid_file``) with ``fds`` as its stdio.

        Returns once the runtime exited and its process runs; raises
        :class:`LaunchFailed` when the runtime failed.
        """
        token = uuid.uuid4().hex
        request = json.dumps({"launch": token, "argv": argv, "pid_file": str(pid_file)})
        with self._cond:
            sock = self._connect()
            self._slots[token] = _Slot()
            try:
                socket.send_fds(sock, [request.encode()], list(fds))
            except OSError:
                del self._slots[token]
                raise
        try:
            slot = self._await(token, lambda s: bool(s.pid) or s.failed is not None, block=True)
        except BaseException:
            self._abandon(token)
            raise
        if slot.failed is not None:
            self.forget(token)
            raise LaunchFailed(slot.failed, slot.error)
        with self._cond:
            pidfd, slot.pidfd = slot.pidfd, None
        return Launched(token, slot.pid, pidfd)

    def wait(self, token: str) -> int:
        """Block until the process of ``token`` was reaped; its exit code."""
        slot = self._await(token, lambda s: s.exited is not None, block=True)
        assert slot.exited is not None
        return slot.exited

    def poll(self, token: str) -> int | None:
        """The exit code of ``token``'s process if it was reaped, else None (never blocks)."""
        return self._await(token, lambda s: s.exited is not None, block=False).exited

    def forget(self, token: str) -> None:
        """Nobody asks about ``token`` any more."""
        with self._cond:
            slot = self._slots.get(token)
            if slot is None:
                return
            if slot.ended or slot.lost:
                del self._slots[token]
            else:
                slot.forgotten = True

    def close(self) -> None:
        """End the subreaper process (at exit): what it still waits for is init's to reap."""
        with self._cond:
            if self._owner != os.getpid():
                return
            if self._sock is not None:
                self._sock.close()  # the server ends at the end of its socket
                self._sock = None
            if self._server is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._server.wait(timeout=5)
                self._server = None

    # -- the connection --

    def _connect(self) -> socket.socket:
        """The socket to the subreaper process, started if need be (the lock held)."""
        if self._owner != os.getpid():  # a forked child: the parent's process is not ours
            self._sock, self._server, self._slots, self._reading = None, None, {}, False
            self._owner = os.getpid()
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # A session of its own: a terminal's ^C to the caller must not end it.
            self._server = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_SERVER), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def _lose_connection(self) -> None:
        """The subreaper process is gone (the lock held): every open slot is lost."""
        for slot in self._slots.values():
            if not slot.ended:
                slot.lost = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._server is not None:
            self._server.wait()
            self._server = None

    def _await(self, token: str, ready: Callable[[_Slot], bool], *, block: bool) -> _Slot:
        with self._cond:
            while True:
                slot = self._slots.get(token)
                if slot is None:
                    raise StateError(f"detached process {token}: not known (forgotten?)")
                if ready(slot):
                    return slot
                if slot.lost:
                    raise SubreaperLost(
                        f"process {slot.pid or '?'}: the subreaper process ended; "
                        "its exit status is lost"
                    )
                if self._reading:
                    if not block:
                        return slot
                    self._cond.wait()
                    continue
                sock = self._sock
                if sock is None:
                    self._lose_connection()
                    continue
                self._reading = True
                self._cond.release()
                try:
                    received = _receive(sock, block=block)
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                if received is None:
                    self._lose_connection()
                elif received == ():
                    return slot  # nothing there, and not blocking
                else:
                    self._dispatch(*received)

    def _dispatch(self, data: bytes, fds: list[int]) -> None:
        message = json.loads(data)
        slot = self._slots.get(str(message.get("token", "")))
        if slot is None:
            for fd in fds:
                os.close(fd)
            return
        if "started" in message:
            slot.pid = int(message["started"])
            slot.pidfd = fds[0] if fds else None
            if slot.abandoned and slot.pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
        elif "failed" in message:
            slot.failed = int(message["failed"])
            slot.error = str(message.get("error", ""))
        elif "exited" in message:
            slot.exited = int(message["exited"])
        if (slot.abandoned or slot.forgotten) and slot.ended:
            if slot.pidfd is not None:
                os.close(slot.pidfd)
            del self._slots[str(message["token"])]

    def _abandon(self, token: str) -> None:
        with self._cond:
            slot = self._slots.get(token)
            if slot is None:
                return
            if slot.ended or slot.lost:
                if slot.pidfd is not None:
                    os.close(slot.pidfd)
                del self._slots[token]
                return
            slot.abandoned = True
            if slot.pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)


def _receive(sock: socket.socket, *, block: bool) -> tuple[bytes, list[int]] | tuple[()] | None:
    """One reply: (data, fds); ``()`` when none is waiting (not blocking); None at the end."""
    # Not socket.recv_fds: before Python 3.12 it ignores its flags (MSG_DONTWAIT).
    fds = array.array("i")
    try:
        data, ancillary, _, _ = sock.recvmsg(
            _MAX_MESSAGE, socket.CMSG_LEN(fds.itemsize), 0 if block else socket.MSG_DONTWAIT
        )
    except BlockingIOError:
        return ()
    except ConnectionResetError:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return data, list(fds)


_DEFAULT = Subreaper()
atexit.register(_DEFAULT.close)


def default_subreaper() -> Subreaper:
    """This process's subreaper client (its process starts on first use)."""
    return _DEFAULT
