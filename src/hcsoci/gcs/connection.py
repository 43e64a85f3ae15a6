"""The host side of the bridge: :class:`GuestConnection` and the guest's processes.

One reader thread per connection reads frames from the virtio-serial port's
host socket and routes them: responses to the waiting request, exit
notifications to their :class:`GuestProcess`, stream bytes to that process's
:class:`GuestStreamReader`.  Stream data is buffered per stream up to its flow
control window, so the reader thread never blocks on a slow consumer.

A heartbeat (:meth:`GuestConnection.start_heartbeat`) bounds how long anyone
waits on a frozen or dead guest: while a request, a process or a container
wait is outstanding, the host pings an agent that has been silent for an
interval; after the given number of unanswered pings in a row the bridge is declared
dead and every waiter gets a :class:`BridgeClosedError` naming the VM and how
long it was silent.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import io
import itertools
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from hcsoci.context import Context, background
from hcsoci.cow import ProcessParameters, Stdio
from hcsoci.errors import HcsociError, NotFoundError, StateError
from hcsoci.gcs import protocol

__all__ = [
    "BridgeClosedError",
    "GuestContainerState",
    "GuestConnection",
    "GuestError",
    "GuestNotFoundError",
    "GuestProcess",
    "GuestStreamReader",
    "GuestStreamWriter",
    "GuestTimeoutError",
]

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 60.0


class GuestError(HcsociError):
    """The guest agent refused or failed a request."""

    def __init__(self, op: str, message: str, errno: int = 0) -> None:
        super().__init__(f"guest agent: {op}: {message}")
        self.op = op
        self.guest_errno = errno
        """The errno the agent reported (0 when none)."""


class GuestNotFoundError(GuestError, NotFoundError):
    """The guest agent reported that something named in the request does not exist."""

    def __init__(self, op: str, message: str, errno: int = 0) -> None:
        GuestError.__init__(self, op, message, errno)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GuestTimeoutError(GuestError, TimeoutError):
    """The guest agent did not answer in time."""


class BridgeClosedError(GuestError):
    """The bridge to the guest agent is gone (agent crashed, VM stopped, or closed)."""


@dataclass
class GuestContainerState:
    """What ``runc state`` and ``runc ps`` say about a container in the guest."""

    status: str
    """``created``, ``running``, ``paused`` or ``stopped``."""
    pid: int
    """The init's pid in the guest (0 once it stopped)."""
    bundle: str
    """The container's bundle directory in the guest."""
    processes: list[int]
    """Every process of the container (guest pids), while it runs."""
    memory_usage_bytes: int | None = None
    """The container cgroup's ``memory.current``, while it runs."""
    cpu_usage_ns: int | None = None
    """The CPU time of the container's cgroup, while it runs."""


@dataclass
class _Pending:
    op: str
    done: threading.Event
    body: dict[str, Any] | None = None
    error: BaseException | None = None


class GuestConnection:
    """A negotiated bridge session with the guest agent of one utility VM."""

    def __init__(self, sock: socket.socket, name: str = "") -> None:
        self._sock = sock
        self.name = name
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._process_keys = itertools.count(1)
        self._processes: dict[int, GuestProcess] = {}
        self._broken: BridgeClosedError | None = None
        self._container_exits: dict[str, int] = {}
        self._container_exited = threading.Condition(self._lock)
        self.version = 0
        self.agent_pid = 0
        self.boot_id = ""
        self.vm_id = ""
        """The VM id the agent was given when its guest was made its own ('' otherwise)."""
        self._last_heard = time.monotonic()
        self._container_waiters = 0
        self._stopped = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._reader = threading.Thread(
            target=self._read_loop, name=f"gcs-bridge-{name}", daemon=True
        )
        self._reader.start()

    @classmethod
    def connect(
        cls,
        path: str,
        ctx: Context,
        timeout: float,
        name: str = "",
        *,
        template: bool = False,
        clone: dict[str, Any] | None = None,
    ) -> GuestConnection:
        """Connect to the port's host socket at ``path`` and negotiate a version.

        Waits up to ``timeout`` seconds (or ``ctx``) for the agent to answer:
        QEMU holds the request until the agent opens its end of the port.
        ``template``: the guest is about to be saved as a template, so the
        agent leaves the kernel's boot id unmade.  ``clone`` (``entropy`` hex,
        ``time_ns``, ``id``): the guest was restored from a template (or saved
        as one); the agent makes it its own before it answers.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        connection = cls(sock, name)
        try:
            args: dict[str, Any] = {"versions": list(protocol.PROTOCOL_VERSIONS)}
            if template:
                args["template"] = True
            if clone is not None:
                args["clone"] = clone
            result = connection.request(ctx, "negotiate", args, timeout=timeout)
        except BaseException:
            connection.close()
            raise
        connection.version = int(result["version"])
        connection.agent_pid = int(result["pid"])
        connection.boot_id = str(result["boot_id"])
        connection.vm_id = str(result.get("vm_id", ""))
        log.debug("guest agent connected", extra={"vm": name, "version": connection.version})
        return connection

    # -- requests -----------------------------------------------------------

    def request(
        self,
        ctx: Context,
        op: str,
        args: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one request and wait for its response (or ``timeout``, or ``ctx``)."""
        ctx.check()
        pending = _Pending(op, threading.Event())
        request_id = next(self._request_ids)
        with self._lock:
            if self._broken is not None:
                raise BridgeClosedError(op, str(self._broken.args[0]))
            self._pending[request_id] = pending
        stop = ctx.after_done(pending.done.set)
        try:
            body = {"op": op, **(args or {})}
            self._send(protocol.message_frame(protocol.REQUEST, request_id, body))
            if not pending.done.wait(timeout):
                raise GuestTimeoutError(
                    op, f"no answer within {timeout:g} s (is the guest agent alive?)"
                )
        finally:
            stop()
            with self._lock:
                self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        if pending.body is None:
            raise ctx.err() or BridgeClosedError(op, "no response")
        if "error" in pending.body:
            error = pending.body["error"]
            code = int(error.get("errno") or 0)
            kind = GuestNotFoundError if code == errno_module.ENOENT else GuestError
            raise kind(op, str(error.get("message")), code)
        result: dict[str, Any] = pending.body.get("result") or {}
        return result

    def _send(self, frame: bytes) -> None:
        with self._send_lock:
            if self._broken is not None:
                raise self._broken
            try:
                self._sock.sendall(frame)
            except OSError as err:
                self.fail(f"bridge write failed: {err}")
                raise BridgeClosedError("send", str(err)) from err

    def _send_all(self, head: bytes, data: bytes | bytearray | memoryview) -> None:
        with self._send_lock:
            if self._broken is not None:
                raise self._broken
            try:
                sent = self._sock.sendmsg([head, data])
                total = len(head) + len(data)
                if sent < total:
                    rest = (memoryview(head + bytes(data)))[sent:]
                    self._sock.sendall(rest)
            except OSError as err:
                self.fail(f"bridge write failed: {err}")
                raise BridgeClosedError("send", str(err)) from err

    # -- processes ----------------------------------------------------------

    def create_process(self, ctx: Context, params: ProcessParameters) -> GuestProcess:
        """Start a process in the guest (the utility VM's own OS, not a container)."""
        if not params.command_args:
            raise StateError("ProcessParameters.command_args: empty command line")
        key = next(self._process_keys)
        process = GuestProcess(self, key, params)
        with self._lock:
            self._processes[key] = process
        env = [f"{k}={v}" for k, v in params.environment.items()]
        args: dict[str, Any] = {
            **_stdio_request(key, params),
            "args": params.command_args,
            "env": env,
            "cwd": params.working_directory or "/",
            "user": params.user,
        }
        try:
            result = self.request(ctx, "create_process", args)
        except BaseException:
            self._forget(key)
            raise
        process._started(int(result["pid"]), int(result.get("stdin_window") or 0))
        return process

    # -- containers (protocol version 2) ---------------------------------------

    def _require(self, op: str, version: int, what: str) -> None:
        """Refuse ``op`` (EOPNOTSUPP) unless the agent speaks ``version``, which ``what`` need."""
        if self.version < version:
            raise GuestError(
                op, f"the guest agent speaks protocol {self.version}, {what} need {version}",
                errno_module.EOPNOTSUPP,
            )  # fmt: skip

    def _check_containers(self, op: str) -> None:
        self._require(op, protocol.CONTAINER_VERSION, "containers")

    def create_container(
        self,
        ctx: Context,
        container_id: str,
        bundle: str,
        spec: dict[str, Any] | None = None,
        files: dict[str, str] | None = None,
    ) -> None:
        """Register a container with the agent (hcsshim's ``CreateContainer``).

        ``bundle`` is a guest directory; the agent writes ``spec`` (an OCI spec
        as JSON builtins, guest paths) to its ``config.json``, or, when
        ``spec`` is None, uses the ``config.json`` already there; and each of
        ``files`` (guest path inside ``bundle`` -> text, protocol version
        :data:`~hcsoci.gcs.protocol.FILES_VERSION`).  Nothing runs until
        :meth:`start_container`.
        """
        self._check_containers("create_container")
        args: dict[str, Any] = {"id": container_id, "bundle": bundle, "spec": spec}
        if files:
            self._require("create_container", protocol.FILES_VERSION, "files")
            args["files"] = sorted(files.items())
        self.request(ctx, "create_container", args)

    def start_container(
        self,
        ctx: Context,
        container_id: str,
        params: ProcessParameters,
        output_file: str = "",
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> GuestProcess:
        """Run the container's init (``runc run``); returns once it runs (hcsshim's ``Start``).

        ``params`` says which stdio pipes to relay and whether the init has a
        terminal (its command line comes from the spec).  ``output_file``
        (a guest path) takes the init's stdout and stderr instead of pipes;
        stdin is then ``/dev/null``.  The returned process is the guest's
        ``runc run``: it exits with the init's status (``128 + N`` for
        signal N), and the agent also sends a ``container_exit`` notification
        (see :meth:`wait_container`).  A SIGKILL sent through it goes to the
        init itself.
        """
        self._check_containers("start_container")
        with self._lock:
            self._container_exits.pop(container_id, None)
        extra = {"id": container_id, "output_file": output_file, "timeout": timeout}
        return self._start(ctx, "start_container", params, extra, timeout + 10)

    def exec_in_container(
        self, ctx: Context, container_id: str, process: dict[str, Any], params: ProcessParameters
    ) -> GuestProcess:
        """Run ``process`` (an OCI process as JSON builtins) in a running container.

        ``params`` gives only the stdio pipes and the terminal.  The returned
        process is the guest's ``runc exec``; it exits with the process's
        status, and a SIGKILL sent through it goes to the process itself.
        """
        self._check_containers("exec_in_container")
        return self._start(
            ctx, "exec_in_container", params, {"id": container_id, "process": process}
        )

    def signal_container(
        self, ctx: Context, container_id: str, sig: int, all_processes: bool = False
    ) -> None:
        """``runc kill``: signal the container's init (or every process with ``all_processes``)."""
        self._check_containers("signal_container")
        args = {"id": container_id, "signal": int(sig), "all": all_processes}
        self.request(ctx, "signal_container", args)

    def _check_control(self, op: str) -> None:
        self._require(op, protocol.CONTAINER_CONTROL_VERSION, "pause, resume and update")

    def pause_container(self, ctx: Context, container_id: str) -> None:
        """``runc pause``: freeze the container's processes (its cgroup in the guest)."""
        self._check_control("pause_container")
        self.request(ctx, "pause_container", {"id": container_id})

    def resume_container(self, ctx: Context, container_id: str) -> None:
        """``runc resume``: thaw the container's processes."""
        self._check_control("resume_container")
        self.request(ctx, "resume_container", {"id": container_id})

    def update_container(
        self,
        ctx: Context,
        container_id: str,
        flags: list[str],
        resources: dict[str, Any] | None = None,
    ) -> None:
        """``runc update`` in the guest: ``flags`` are runc's ``--name=value`` tokens
        (``--memory=64m``, ``--cpu-quota=50000``); ``resources`` an OCI
        LinuxResources object as JSON builtins (runc's ``--resources``)."""
        self._check_control("update_container")
        args = {"id": container_id, "flags": list(flags), "resources": resources}
        self.request(ctx, "update_container", args)

    def container_state(self, ctx: Context, container_id: str) -> GuestContainerState:
        """The container's runc state and processes; GuestNotFoundError when runc has none."""
        self._check_containers("container_state")
        result = self.request(ctx, "container_state", {"id": container_id})
        return GuestContainerState(
            status=str(result["status"]),
            pid=int(result["pid"]),
            bundle=str(result["bundle"]),
            processes=[int(pid) for pid in result["processes"]],
            memory_usage_bytes=_optional_int(result.get("memory_usage_bytes")),
            cpu_usage_ns=_optional_int(result.get("cpu_usage_ns")),
        )

    def delete_container(self, ctx: Context, container_id: str) -> bool:
        """``runc delete --force`` and forget it; False when the agent did not know it."""
        self._check_containers("delete_container")
        result = self.request(ctx, "delete_container", {"id": container_id})
        return bool(result.get("deleted"))

    def wait_container(self, container_id: str, timeout: float | None = None) -> int:
        """Block until the agent reports the exit of the container's init; its status.

        Raises :class:`GuestTimeoutError` after ``timeout`` seconds and the
        bridge's error if the bridge breaks first.
        """
        with self._container_exited:
            self._container_waiters += 1
            try:
                done = self._container_exited.wait_for(
                    lambda: container_id in self._container_exits or self._broken is not None,
                    timeout,
                )
            finally:
                self._container_waiters -= 1
            if container_id in self._container_exits:
                return self._container_exits[container_id]
            if not done:
                raise GuestTimeoutError("wait_container", f"{container_id} still runs")
            assert self._broken is not None
            raise self._broken

    def _start(
        self,
        ctx: Context,
        op: str,
        params: ProcessParameters,
        extra: dict[str, Any],
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> GuestProcess:
        key = next(self._process_keys)
        process = GuestProcess(self, key, params)
        process._in_container = True
        with self._lock:
            self._processes[key] = process
        args: dict[str, Any] = {**_stdio_request(key, params), **extra}
        try:
            result = self.request(ctx, op, args, timeout=timeout)
        except BaseException:
            process.close()  # the agent may have started (and tracks) a runc that gave up
            raise
        process._started(int(result["pid"]), int(result.get("stdin_window") or 0))
        process.container_pid = int(result.get("init_pid") or 0)
        return process

    def _forget(self, key: int) -> None:
        with self._lock:
            self._processes.pop(key, None)

    # -- the reader ---------------------------------------------------------

    def _read_loop(self) -> None:
        header = bytearray(protocol.HEADER_SIZE)
        reason = f"VM {self.name}: the bridge closed (its guest agent or QEMU stopped)"
        try:
            while True:
                if not self._recv_exactly(header):
                    break
                frame_type, frame_id, length = protocol.parse_header(header)
                payload = bytearray(length)
                if length and not self._recv_exactly(payload):
                    break
                self._last_heard = time.monotonic()
                self._route(frame_type, frame_id, payload)
        except protocol.ProtocolError as err:
            reason = f"bridge protocol error: {err}"
        except OSError as err:
            reason = f"bridge read failed: {err}"
        self.fail(reason)

    def _recv_exactly(self, buffer: bytearray) -> bool:
        view = memoryview(buffer)
        while view:
            n = self._sock.recv_into(view, len(view), socket.MSG_WAITALL)
            if n == 0:
                return False
            view = view[n:]
        return True

    def _route(self, frame_type: int, frame_id: int, payload: bytearray) -> None:
        if frame_type == protocol.DATA:
            process, fd = self._stream_owner(frame_id)
            if process is not None:
                process._data(fd, payload)
        elif frame_type == protocol.WINDOW:
            process, _ = self._stream_owner(frame_id)
            if process is not None:
                process._stdin_credit(protocol.parse_credit(payload))
        elif frame_type == protocol.EOF:
            process, fd = self._stream_owner(frame_id)
            if process is not None:
                process._eof(fd)
        elif frame_type == protocol.RESPONSE:
            with self._lock:
                pending = self._pending.get(frame_id)
            if pending is not None:
                pending.body = protocol.parse_message(payload)
                pending.done.set()
        elif frame_type == protocol.NOTIFY:
            body = protocol.parse_message(payload)
            if body.get("event") == "exit":
                with self._lock:
                    exited = self._processes.get(int(body["key"]))
                if exited is not None:
                    exited._exited(int(body["status"]))
            elif body.get("event") == "container_exit":
                with self._container_exited:
                    self._container_exits[str(body["id"])] = int(body["status"])
                    self._container_exited.notify_all()
        else:
            log.warning("unexpected frame from the guest", extra={"type": frame_type})

    def _stream_owner(self, stream: int) -> tuple[GuestProcess | None, int]:
        key, fd = protocol.split_stream_id(stream)
        with self._lock:
            return self._processes.get(key), fd

    # -- the heartbeat ------------------------------------------------------

    def start_heartbeat(
        self, interval: float, misses: int, detail: Callable[[], str] | None = None
    ) -> None:
        """Declare the bridge dead after ``misses`` pings in a row get no answer.

        While anything waits on the guest (a request, a process, a container
        wait), an agent silent for ``interval`` seconds is pinged, once per
        interval; any frame from it counts as an answer.  When ``misses``
        pings in a row went unanswered (``interval * misses`` seconds of
        silence while this process ran) the connection fails every waiter
        with a :class:`BridgeClosedError` naming the VM and the silence.
        Misses are counted in pings, not in seconds since the guest was last
        heard: when this process (or the whole machine) stood still, the
        guest had no ping to answer, and the next round pings it again
        instead of declaring it dead.  ``detail()`` is appended to the failure's
        reason (the VM's console tail: what the guest said before it went quiet).
        """
        if self._heartbeat is not None:
            raise StateError(f"bridge {self.name}: the heartbeat runs already")
        self._last_heard = time.monotonic()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop,
            args=(interval, misses, detail),
            name=f"gcs-heartbeat-{self.name}",
            daemon=True,
        )
        self._heartbeat.start()

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._pending or self._processes or self._container_waiters)

    def _heartbeat_loop(
        self, interval: float, misses: int, detail: Callable[[], str] | None
    ) -> None:
        heard, unanswered = self._last_heard, 0
        while not self._stopped.wait(interval):
            now = time.monotonic()
            if not self._busy():
                self._last_heard = now  # nobody waits: silence is fine
            if self._last_heard != heard:
                heard, unanswered = self._last_heard, 0  # the guest spoke since the last round
            if now - heard < interval:
                continue
            if unanswered >= misses:
                self.fail(
                    f"VM {self.name}: the guest agent has not answered for {now - heard:.0f} s "
                    f"({unanswered} heartbeats missed, one every {interval:g} s): "
                    "the guest is frozen or dead" + (detail() if detail is not None else "")
                )
                with contextlib.suppress(OSError):  # unblocks a writer stuck on a full socket
                    self._sock.shutdown(socket.SHUT_RDWR)
                return
            self._ping()
            unanswered += 1

    def _ping(self) -> None:
        """Send a ping without ever blocking (a frozen guest stops draining the socket)."""
        if not self._send_lock.acquire(blocking=False):
            return  # a writer holds the socket: its frames are on their way
        try:
            _, writable, _ = select.select([], [self._sock], [], 0)
            if writable and self._broken is None:
                frame = protocol.message_frame(
                    protocol.REQUEST, next(self._request_ids), {"op": "ping"}
                )
                self._sock.sendall(frame)  # small, and the socket has room
        except OSError as err:
            log.debug("heartbeat ping failed", extra={"vm": self.name, "error": str(err)})
        finally:
            self._send_lock.release()

    # -- failure and shutdown -----------------------------------------------

    @property
    def broken(self) -> BridgeClosedError | None:
        """Why the bridge is gone, or None while it works."""
        return self._broken

    def fail(self, reason: str) -> None:
        """Mark the bridge broken: every waiter gets a :class:`BridgeClosedError`."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = BridgeClosedError("bridge", reason)
            self._stopped.set()
            self._container_exited.notify_all()
            pending = list(self._pending.values())
            processes = list(self._processes.values())
        log.debug("bridge closed", extra={"vm": self.name, "reason": reason})
        for item in pending:
            item.error = BridgeClosedError(item.op, reason)
            item.done.set()
        for process in processes:
            process._bridge_failed(self._broken)

    def close(self) -> None:
        """Close the bridge; the guest's processes are dropped by the agent."""
        self.fail("the bridge was closed")
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not threading.current_thread():
            self._reader.join(10)
        heartbeat = self._heartbeat
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join(10)
        self._sock.close()


class GuestStreamReader(io.RawIOBase):
    """A process's stdout or stderr, as a binary file without ``fileno()``.

    Reads block until data arrives and return ``b""`` at the stream's end (or
    once the bridge is gone).  Closing the reader, or the process handle, from
    another thread cuts a blocked read: it raises ``ValueError``, like any I/O
    on a closed file, as the pipe ends of the hosts on this machine do.
    """

    def __init__(self, return_credit: Callable[[int], None], window: int, name: str = "") -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._chunks: deque[bytearray] = deque()
        self._offset = 0
        self._eof = False
        self._cut = False
        self.name = name or "output"
        self._return_credit = return_credit
        self._window = window
        self._consumed = 0

    def readable(self) -> bool:
        return True

    def _feed(self, data: bytearray) -> None:
        with self._cond:
            self._chunks.append(data)
            self._cond.notify()

    def _finish(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _cut_reads(self) -> None:
        with self._cond:
            self._cut = True
            self._chunks.clear()
            self._cond.notify_all()

    def close(self) -> None:
        """Close the stream; a read blocked in another thread raises ``ValueError``."""
        self._cut_reads()
        super().close()

    def _take(self, limit: int) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof and not self._cut:
                self._cond.wait()
            if self._cut:
                raise ValueError(f"I/O operation on closed {self.name} stream")
            if not self._chunks:
                return b""
            head = self._chunks[0]
            end = min(len(head), self._offset + limit)
            data = bytes(head[self._offset : end])
            if end == len(head):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = end
            self._consumed += len(data)
            credit = 0
            if self._consumed >= self._window // 4 or (not self._chunks and self._consumed):
                credit, self._consumed = self._consumed, 0
        if credit:
            with contextlib.suppress(GuestError):  # a gone bridge ends the stream anyway
                self._return_credit(credit)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        return self._take(size)

    def readall(self) -> bytes:
        parts = []
        while chunk := self._take(protocol.MAX_DATA_FRAME):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._take(len(view))
        view[: len(data)] = data
        return len(data)


class GuestStreamWriter(io.RawIOBase):
    """A process's stdin, as a binary file without ``fileno()``.

    ``write`` blocks until the guest has room (flow control) and always writes
    everything; ``close`` sends end-of-file.
    """

    def __init__(self, process: GuestProcess, window: int) -> None:
        super().__init__()
        self._process = process
        self._stream = protocol.stream_id(process._key, protocol.STDIN)
        self._cond = threading.Condition()
        self._credit = window
        self._failed: BaseException | None = None
        self._closing = False
        self._eof_sent = False

    def writable(self) -> bool:
        return True

    def _add_credit(self, credit: int) -> None:
        with self._cond:
            self._credit += credit
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._failed = error
            self._cond.notify_all()

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed stdin")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            with self._cond:
                while self._credit <= 0 and self._failed is None and not self._closing:
                    self._cond.wait()
                if self._closing:
                    raise ValueError("write to a closed stdin")
                if self._failed is not None:
                    raise BrokenPipeError(errno_module.EPIPE, str(self._failed))
                n = min(self._credit, len(view), protocol.MAX_DATA_FRAME)
                self._credit -= n
            head = protocol.header(protocol.DATA, self._stream, n)
            self._process._connection._send_all(head, view[:n])
            view = view[n:]
        return total

    def close(self) -> None:
        """Send end-of-file; a write waiting for room in another thread raises ``ValueError``."""
        if self.closed:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().close()
        if not self._eof_sent:
            self._eof_sent = True
            with contextlib.suppress(GuestError):  # nothing to close on the other side
                self._process._connection._send(protocol.eof_frame(self._stream))


class GuestProcess:
    """A process running in the utility VM's own OS (``hcsoci.cow.Process``)."""

    def __init__(self, connection: GuestConnection, key: int, params: ProcessParameters) -> None:
        self._connection = connection
        self._key = key
        self._pid = 0
        self._exit_status: int | None = None
        self._exited_event = threading.Event()
        self._failure: BridgeClosedError | None = None
        self._closed = False
        self._has_console = params.emulate_console
        send_credit = self._credit_sender
        self._stdout = (
            GuestStreamReader(send_credit(protocol.STDOUT), protocol.DEFAULT_WINDOW, "stdout")
            if params.create_stdout_pipe
            else None
        )
        self._stderr = (
            GuestStreamReader(send_credit(protocol.STDERR), protocol.DEFAULT_WINDOW, "stderr")
            if params.create_stderr_pipe and not params.emulate_console
            else None
        )
        self._stdin: GuestStreamWriter | None = None
        self._wants_stdin = params.create_stdin_pipe
        self._in_container = False  # a runc run/exec: SIGKILL goes to its container process
        self.container_pid = 0
        """For a container's init: its pid in the guest (0 otherwise)."""

    def _credit_sender(self, fd: int) -> Callable[[int], None]:
        stream = protocol.stream_id(self._key, fd)

        def send(credit: int) -> None:
            if not self._closed:
                self._connection._send(protocol.window_frame(stream, credit))

        return send

    def _started(self, pid: int, stdin_window: int) -> None:
        self._pid = pid
        if self._wants_stdin:
            self._stdin = GuestStreamWriter(self, stdin_window or protocol.DEFAULT_WINDOW)

    # Called by the connection's reader thread.
    def _data(self, fd: int, data: bytearray) -> None:
        reader = self._stdout if fd == protocol.STDOUT else self._stderr
        if reader is not None:
            reader._feed(data)

    def _eof(self, fd: int) -> None:
        reader = self._stdout if fd == protocol.STDOUT else self._stderr
        if reader is not None:
            reader._finish()

    def _stdin_credit(self, credit: int) -> None:
        if self._stdin is not None:
            self._stdin._add_credit(credit)

    def _exited(self, status: int) -> None:
        self._exit_status = status
        self._exited_event.set()

    def _bridge_failed(self, error: BridgeClosedError) -> None:
        self._failure = error
        for reader in (self._stdout, self._stderr):
            if reader is not None:
                reader._finish()
        if self._stdin is not None:
            self._stdin._fail(error)
        self._exited_event.set()

    # The cow.Process protocol.
    def pid(self) -> int:
        """The process id inside the utility VM."""
        return self._pid

    def stdio(self) -> Stdio:
        """(stdin, stdout, stderr): binary file objects without ``fileno()``, or None."""
        return cast(Stdio, (self._stdin, self._stdout, self._stderr))

    def close_stdin(self, ctx: Context) -> None:
        """Close the process's stdin (it reads end-of-file once it drained what was sent)."""
        if self._stdin is not None:
            self._stdin.close()

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        """Resize the process's pseudo-terminal."""
        if not self._has_console:
            raise StateError(f"process {self._pid} has no console to resize")
        self._connection.request(
            ctx, "resize_console", {"key": self._key, "width": width, "height": height}
        )

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig``; False when the process had exited already."""
        if self._exit_status is not None:
            return False
        op = "signal_process"
        if self._in_container and sig == 9:
            # runc cannot forward SIGKILL: the agent sends it to the container process.
            op = "signal_container_process"
        result = self._connection.request(ctx, op, {"key": self._key, "signal": int(sig)})
        return bool(result.get("delivered"))

    def kill(self, ctx: Context) -> bool:
        """Send SIGKILL; False when the process had exited already."""
        return self.signal(ctx, 9)

    def wait(self) -> None:
        """Block until the process exits; raises if the bridge breaks first."""
        self._exited_event.wait()
        if self._exit_status is None and self._failure is not None:
            raise self._failure

    def running(self) -> bool:
        """Whether the process still runs: no exit status, and the bridge has not broken."""
        return self._exit_status is None and self._failure is None

    def exit_code(self) -> int:
        """The exit code (``128 + N`` for signal N); raises while it is still running."""
        if self._exit_status is None:
            if self._failure is not None:
                raise self._failure
            raise StateError(f"process {self._pid} in the utility VM is still running")
        return self._exit_status

    def close(self) -> None:
        """Drop the stdio relays and the agent's record; the process keeps running.

        A relay blocked on the process's stdout or stderr is cut (its read
        raises ``ValueError``), one blocked on stdin gets ``BrokenPipeError``.
        """
        if self._closed:
            return
        self._closed = True
        for reader in (self._stdout, self._stderr):
            if reader is not None:
                reader._cut_reads()
        if self._stdin is not None:
            self._stdin._fail(StateError("process handle closed"))
        self._connection._forget(self._key)
        if self._connection.broken is None:
            try:
                self._connection.request(
                    background(), "close_process", {"key": self._key}, timeout=10.0
                )
            except GuestError as err:
                log.debug("close_process failed", extra={"error": str(err)})

    def __repr__(self) -> str:
        return f"<GuestProcess pid={self._pid} key={self._key}>"


def _stdio_request(key: int, params: ProcessParameters) -> dict[str, Any]:
    """The part of a process-starting request that says which streams the guest makes."""
    return {
        "key": key,
        "terminal": params.emulate_console,
        "console_size": list(params.console_size),
        "stdin": params.create_stdin_pipe,
        "stdout": params.create_stdout_pipe,
        "stderr": params.create_stderr_pipe and not params.emulate_console,
        "window": protocol.DEFAULT_WINDOW,
    }


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
