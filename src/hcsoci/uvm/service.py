"""The controller process of a utility VM: one per VM, serving its containers to every process.

QEMU serves one QMP client and the guest agent one bridge connection, so one
handle drives a VM at a time (:func:`hcsoci.uvm.open_vm`).  This process is
that handle for as long as the VM hosts containers: it owns the
:class:`~hcsoci.uvm.UtilityVM` (QMP and the bridge), creates the VM's
containers with :func:`hcsoci.create_container` (``hosting_system`` = the VM,
so the journal, ``Resources`` and gc apply as for any container) and serves
every later call -- create, start, exec, signal, state, wait, delete, list --
from any process over ``<VM state dir>/controller.sock`` (0600 in the VM's
0700 directory; peers other than root are refused), framed as
:mod:`hcsoci.uvm.channel` says.  :mod:`hcsoci.uvm.remote` is the client.

Run as ``python -m hcsoci.uvm.service --ready-fd N (--options JSON | --attach ID)``
(:func:`hcsoci.uvm.remote.start_controller` does): it detaches (a session of
its own; the creator need not outlive it), makes and boots a new VM from
``UVMOptions`` JSON -- recording itself as the VM's controller, so that
``hcsoci gc`` reclaims the VM once this process died -- or attaches to a VM
``hcsoci uvm create`` handed over.  Its log is ``controller.log`` (0600) in
the VM's state directory.  On descriptor N it writes one line, ``ready PID
VM_ID`` once it serves or ``error MESSAGE``, and closes it.

A process's stdio: the client passes descriptors (its pipes, or its own
stdio) with the request (``SCM_RIGHTS``), and this process runs a
:class:`~hcsoci.Cmd` on the container with those descriptors as its streams,
so the copying, stdin end-of-file, the cut after exit and a reader that went
away (``SIGPIPE``) behave as for any ``Cmd``; the request's connection then
carries the exit code and closes.  Signals and terminal resizes name the
process by the token the reply gave.

Pods: a create request may carry ``pod`` (see
:meth:`hcsoci.uvm.remote.ControllerClient.create`): the sandbox comes first
in a VM of its own, and each container of its pod is created with its
``join`` namespaces pointed at those of the sandbox's init in the guest
(``/proc/PID/ns/...``).  ``pause``, ``resume`` and ``update`` are the guest's
``runc pause``/``resume``/``update`` on a running container.

The controller ends, closing the VM, when the VM's last container is deleted
-- in a pod, when its sandbox is, releasing any other container of the pod
with the VM -- (or when no container came within :data:`FIRST_CONTAINER_GRACE` seconds of
its start, or a create left none), unless it attached to a handed-over VM:
that one it keeps serving until the VM stops.  SIGTERM ends it too, releasing
every container it hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import logging
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from hcsoci import container_table, oci
from hcsoci.cmd import Cmd, ExitError
from hcsoci.context import background
from hcsoci.cow import ProcessParameters
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError, StateError
from hcsoci.paths import check_id
from hcsoci.resources import Resources, release_resources
from hcsoci.store import open_store
from hcsoci.uvm.channel import (
    SOCKET_NAME,
    ChannelError,
    bind_socket,
    error_kind,
    recv_frame,
    send_frame,
)
from hcsoci.uvm.container import VMContainer
from hcsoci.uvm.options import UVMOptions
from hcsoci.uvm.vm import UtilityVM, create, open_vm

__all__ = ["FIRST_CONTAINER_GRACE", "UPDATE_FLAGS", "VMService", "main"]

log = logging.getLogger(__name__)

FIRST_CONTAINER_GRACE = 120.0
"""Seconds a controller of a new VM waits for its first container before it ends."""

REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send its request once connected."""

MAX_CONNECTIONS = 128
"""Connections served at once; more are refused with a one-line error."""

COPY_AFTER_EXIT = 10.0
"""Seconds a process's output relays get after it exited (``Cmd.copy_after_exit_timeout``)."""

_PEERCRED = struct.Struct("3i")


@dataclass
class _Hosted:
    container: VMContainer
    resources: Resources


class _ClientStdin(io.RawIOBase):
    """A client's stdin descriptor, read so that :meth:`cut` ends a read blocked on it.

    No ``fileno()``: the relay then reads through :meth:`readinto`, which waits
    for the descriptor and a wake-up pipe together.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            if self._wake_r in [fd for fd, _ in poller.poll()]:
                raise ValueError("stdin relay cut")
            try:
                return os.readv(self._fd, [buffer])
            except BlockingIOError:
                continue  # a non-blocking descriptor of the client's: wait again

    def cut(self) -> None:
        """End a read waiting in another thread (it raises ``ValueError``)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        if not self.closed:
            for fd in (self._fd, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        super().close()


class _Session:
    """A process a client asked for, relayed between the guest and the client's descriptors."""

    def __init__(self, container_id: str, cmd: Cmd, stdin: _ClientStdin | None) -> None:
        self.token = secrets.token_hex(16)
        self.container_id = container_id
        self.cmd = cmd
        self.stdin = stdin


def _one_line(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def _id(request: dict[str, Any], key: str = "id") -> str:
    return check_id(request.get(key), f"request.{key}")


def _flag(request: dict[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"request.{key}: {value!r} is not true or false")
    return value


def _int(request: dict[str, Any], key: str, low: int, high: int) -> int:
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgumentError(f"request.{key}: {value!r} is not an integer in [{low}, {high}]")
    return value


def _token(request: dict[str, Any]) -> str:
    value = request.get("token")
    if not isinstance(value, str) or len(value) != 32:
        raise InvalidArgumentError("request.token: not a process token")
    return value


UPDATE_FLAGS = frozenset(
    (
        "blkio-weight", "cpu-period", "cpu-quota", "cpu-share", "cpu-rt-period",
        "cpu-rt-runtime", "cpuset-cpus", "cpuset-mems", "kernel-memory", "kernel-memory-tcp",
        "memory", "memory-reservation", "memory-swap", "pids-limit", "l3-cache-schema",
        "mem-bw-schema",
    )
)  # fmt: skip
"""``runc update``'s limit flags, as ``update`` requests may carry them (``--name=value``)."""

_NAMESPACE_FILES = {"network": "net", "ipc": "ipc", "uts": "uts", "pid": "pid"}
"""The namespaces a pod's container may share with its sandbox, and their ``/proc/PID/ns`` names."""


@dataclass(frozen=True)
class _Pod:
    """A create request's ``pod``: the sandbox itself, or a container joining ``sandbox``."""

    role: str
    sandbox: str
    join: tuple[str, ...]

    def __str__(self) -> str:
        if self.role == "sandbox":
            return "a pod's sandbox"
        return f"in pod {self.sandbox}, sharing {', '.join(self.join)}"


def _pod(request: dict[str, Any]) -> _Pod | None:
    """The request's ``pod`` (``{"role": "sandbox"}`` or ``{"role": "container",
    "sandbox": ID, "join": [namespace types]}``), checked; None without one."""
    pod = request.get("pod")
    if pod is None:
        return None
    if not isinstance(pod, dict):
        raise InvalidArgumentError(f"request.pod: {pod!r} is not an object")
    role = pod.get("role")
    if role == "sandbox":
        return _Pod("sandbox", _id(request), ())
    if role != "container":
        raise InvalidArgumentError(f"request.pod.role: {role!r} is not sandbox or container")
    sandbox = check_id(pod.get("sandbox"), "request.pod.sandbox")
    join = pod.get("join", ["network"])
    if (
        not isinstance(join, list)
        or not all(isinstance(kind, str) and kind in _NAMESPACE_FILES for kind in join)
        or "network" not in join
    ):
        raise InvalidArgumentError(
            f"request.pod.join: {join!r} is not a list of {sorted(_NAMESPACE_FILES)} "
            "holding network"
        )
    return _Pod("container", sandbox, tuple(dict.fromkeys(join)))


class VMService:
    """Serves the containers of one utility VM over its controller socket.

    ``persistent``: the VM was handed over to the user (``hcsoci uvm create``);
    the service keeps serving after the last container goes, and leaves the VM
    running when it ends.
    """

    def __init__(self, vm: UtilityVM, persistent: bool) -> None:
        self.vm = vm
        self.persistent = persistent
        self.socket_path = vm.state_dir / SOCKET_NAME
        self._store = open_store()
        self._containers: dict[str, _Hosted] = {}
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._devices = threading.Lock()  # creates and deletes change the VM's devices: one at once
        self._stopping = threading.Event()
        self._tried_create = False
        self._sandbox = ""  # the pod's sandbox container: deleting it ends the VM
        self._pod_over = False
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ops: dict[str, Callable[[dict[str, Any], list[int], socket.socket], Any]] = {
            "hello": self._hello,
            "create": self._create,
            "get": self._get_op,
            "start": self._start,
            "kill": self._kill,
            "properties": self._properties,
            "processes": self._processes,
            "wait": self._wait,
            "exec": self._exec,
            "signal_process": self._signal_process,
            "resize": self._resize,
            "close_stdin": self._close_stdin,
            "delete": self._delete,
            "list": self._list,
            "pause": self._pause,
            "resume": self._resume,
            "update": self._update,
        }

    # -- the loop ------------------------------------------------------------

    def serve(self, on_ready: Callable[[], None]) -> None:
        """Listen, call ``on_ready``, serve until stopped; then release what it hosts."""
        listener: socket.socket | None = None
        started = time.monotonic()
        try:
            listener = bind_socket(self.socket_path)
            watcher = threading.Thread(target=self._watch_vm, name="vm-watch", daemon=True)
            watcher.start()
            on_ready()
            while not self._stopping.is_set():
                timeout = None
                if not self.persistent and not self._tried_create:
                    timeout = max(0.0, started + FIRST_CONTAINER_GRACE - time.monotonic())
                    if timeout == 0.0:
                        log.info("no container came in %.0f s: ending", FIRST_CONTAINER_GRACE)
                        break
                ready, _, _ = select.select([listener.fileno(), self._wake_r], [], [], timeout)
                if listener.fileno() in ready:
                    self._accept(listener)
        finally:
            if listener is not None:
                listener.close()
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
            self._release_all()

    def stop(self) -> None:
        """End :meth:`serve` (from any thread, or a signal handler)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError as err:
            log.warning("accept failed: %s", err)
            return
        if not self._connections.acquire(blocking=False):
            with contextlib.suppress(OSError), conn:
                conn.settimeout(1.0)
                send_frame(conn, {"ok": False, "error": "controller busy: too many connections"})
            return
        thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
        try:
            thread.start()
        except BaseException:
            self._connections.release()
            conn.close()
            raise

    def _watch_vm(self) -> None:
        self.vm.wait()
        if not self._stopping.is_set():
            log.warning("the VM stopped (its QEMU exited): ending")
            self.stop()

    def _check_idle(self) -> None:
        with self._lock:
            idle = not self._containers
            pod_over = self._pod_over
        if pod_over:
            log.info("the pod's sandbox is deleted: ending, with the pod's other containers")
            self.stop()
        elif idle and not self.persistent and self._tried_create:
            log.info("the VM's last container is gone: ending")
            self.stop()

    # -- one connection --------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        fds: list[int] = []
        op = ""
        try:
            _, uid, _ = _PEERCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            conn.settimeout(REQUEST_TIMEOUT)
            if uid != 0:
                send_frame(conn, {"ok": False, "error": "only root may use the VM controller"})
                return
            try:
                request = recv_frame(conn, fds)
            except (ChannelError, TimeoutError) as err:
                send_frame(conn, {"ok": False, "error": f"bad request: {err}", "kind": "invalid"})
                return
            if request is None:
                return
            conn.settimeout(None)
            raw_op = request.get("op")
            op = raw_op if isinstance(raw_op, str) else ""
            handler = self._ops.get(op)
            try:
                if handler is None:
                    raise InvalidArgumentError(f"request.op: {request.get('op')!r} is unknown")
                reply = handler(request, fds, conn)
            except Exception as err:
                if not isinstance(err, HcsociError):
                    log.exception("request %s failed", op)
                reply = {"ok": False, "error": _one_line(err), "kind": error_kind(err)}
            if reply is not None:
                send_frame(conn, {"ok": True, **reply} if "ok" not in reply else reply)
        except OSError as err:  # the client went away
            log.debug("connection ended: %s", err)
        except Exception:  # never let one client take the controller down
            log.exception("connection failed")
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                conn.close()
            self._connections.release()
            if op in ("create", "delete"):
                self._check_idle()

    def _hosted(self, container_id: str) -> _Hosted:
        with self._lock:
            hosted = self._containers.get(container_id)
        if hosted is None:
            raise NotFoundError(
                f"container id: {container_id!r} does not exist in utility VM {self.vm.id()}"
            )
        return hosted

    # -- the operations ----------------------------------------------------------

    def _hello(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        return {"vm": self.vm.id(), "pid": os.getpid(), "persistent": self.persistent}

    def _create(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        container_id = _id(request)
        owner = request.get("owner", "")
        if not isinstance(owner, str) or len(owner) > 256:
            raise InvalidArgumentError("request.owner: not a string of at most 256 characters")
        networks = request.get("networks", [])
        if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
            raise InvalidArgumentError("request.networks: not a list of network names")
        spec_data = request.get("spec")
        if not isinstance(spec_data, dict):
            raise InvalidArgumentError("request.spec: not an OCI spec object")
        spec = oci.decode_spec(spec_data)
        pod = _pod(request)
        with self._devices:
            if self._stopping.is_set() or self._pod_over:
                raise StateError(f"the controller of utility VM {self.vm.id()} is ending")
            with self._lock:
                if container_id in self._containers:
                    raise StateError(f"CreateOptions.id: container {container_id!r} exists")
                if pod is not None and pod.role == "sandbox" and self._containers:
                    raise StateError(
                        f"request.pod: utility VM {self.vm.id()} hosts containers already; "
                        "a pod's sandbox comes first, in a VM of its own"
                    )
                self._tried_create = True  # from now on, no container left means: end
            if pod is not None and pod.role == "container":
                self._join_sandbox(spec, pod)
            options = CreateOptions(
                id=container_id, owner=owner, spec=spec, hosting_system=self.vm, networks=networks
            )
            container, resources = create_container(background(), options)
            assert isinstance(container, VMContainer)
            with self._lock:
                self._containers[container_id] = _Hosted(container, resources)
                if pod is not None and pod.role == "sandbox":
                    self._sandbox = container_id
        log.info("created container %s%s", container_id, f" ({pod})" if pod else "")
        return {"id": container_id}

    def _join_sandbox(self, spec: oci.Spec, pod: _Pod) -> None:
        """Point the spec's ``pod.join`` namespaces at those of the sandbox's init in the guest."""
        with self._lock:
            is_sandbox = pod.sandbox == self._sandbox and pod.sandbox in self._containers
        if not is_sandbox:
            raise NotFoundError(
                f"request.pod.sandbox: {pod.sandbox!r} is not the sandbox of utility VM "
                f"{self.vm.id()}"
            )
        state = self.vm.gcs.container_state(background(), pod.sandbox)
        if state.status not in ("running", "paused") or state.pid <= 0:
            raise StateError(f"request.pod.sandbox: sandbox {pod.sandbox} is {state.status}")
        if spec.linux is None:
            spec.linux = oci.Linux()
        namespaces = spec.linux.namespaces = list(spec.linux.namespaces or [])
        for kind in pod.join:
            path = f"/proc/{state.pid}/ns/{_NAMESPACE_FILES[kind]}"
            for namespace in namespaces:
                if namespace.type == kind:
                    namespace.path = path
                    break
            else:
                namespaces.append(oci.LinuxNamespace(type=kind, path=path))

    def _get_op(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        hosted = self._hosted(_id(request))
        spec = json.loads(oci.encode_spec(hosted.container.spec))
        return {"spec": spec, "owner": hosted.container.owner, "vm": self.vm.id()}

    def _start(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        self._hosted(_id(request)).container.start(background())
        return {}

    def _kill(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        container_id = _id(request)
        container = self._hosted(container_id).container
        sig = _int(request, "signal", 1, 64)
        container.state_type().check_signal(container_id)
        self.vm.gcs.signal_container(background(), container_id, sig, _flag(request, "all"))
        return {}

    def _properties(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        props = self._hosted(_id(request)).container.properties(background())
        return {"properties": props.to_dict()}

    def _processes(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        """The container's processes: guest pid and command line (read in the guest)."""
        props = self._hosted(_id(request)).container.properties(background())
        pids = [int(pid) for pid in props.processes]
        if not pids:
            return {"processes": []}
        script = 'for p in "$@"; do printf "%s " "$p"; tr "\\0" " " < /proc/$p/cmdline; echo; done'
        out = io.BytesIO()
        params = ProcessParameters(
            command_args=["sh", "-c", script, "sh", *map(str, pids)], create_stdout_pipe=True
        )
        process = self.vm.create_process(background(), params)
        stdout = process.stdio()[1]
        try:
            assert stdout is not None
            out.write(stdout.read())
            process.wait()
        finally:
            process.close()
        found = []
        for line in out.getvalue().decode(errors="replace").splitlines():
            pid, _, command = line.partition(" ")
            if pid.isdigit():
                found.append({"pid": int(pid), "command": command.strip()})
        return {"processes": found}

    def _wait(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        container = self._hosted(_id(request)).container
        container.wait()
        return {"exit_code": container.properties(background()).exit_code}

    def _exec(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        """Run a process (``process`` null: the init) with the client's descriptors as stdio."""
        container_id = _id(request)
        container = self._hosted(container_id).container
        streams = request.get("streams")
        if (
            not isinstance(streams, list)
            or len(streams) != 3
            or not all(isinstance(s, bool) for s in streams)
        ):
            raise InvalidArgumentError("request.streams: not three true/false values")
        if len(fds) != sum(streams):
            raise InvalidArgumentError(
                f"request.streams: {sum(streams)} streams but {len(fds)} descriptors sent"
            )
        process_data = request.get("process")
        process: oci.Process | None = None
        if process_data is not None:
            if not isinstance(process_data, dict):
                raise InvalidArgumentError("request.process: not an OCI process object")
            try:
                process = msgspec.convert(process_data, oci.Process)
            except msgspec.ValidationError as err:
                raise InvalidArgumentError(f"request.process: {err}") from None
            if not process.args:
                raise InvalidArgumentError("request.process.args: empty command line")
        taken = iter(list(fds))
        fds.clear()  # from here on the session's streams own them
        stdin: _ClientStdin | None = None
        files: list[Any] = []
        cmd = Cmd(container, process)
        cmd.copy_after_exit_timeout = COPY_AFTER_EXIT
        try:
            if streams[0]:
                stdin = _ClientStdin(next(taken))
                files.append(stdin)
                cmd.stdin = stdin
            if streams[1]:
                cmd.stdout = io.FileIO(next(taken), "wb")
                files.append(cmd.stdout)
            if streams[2]:
                cmd.stderr = io.FileIO(next(taken), "wb")
                files.append(cmd.stderr)
            session = _Session(container_id, cmd, stdin)
            cmd.start()
        except BaseException:
            for file in files:
                file.close()
            for fd in taken:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        assert cmd.process is not None
        with self._lock:
            self._sessions[session.token] = session
        done_r, done_w = os.pipe2(os.O_CLOEXEC)
        if _flag(request, "kill_on_disconnect"):
            threading.Thread(
                target=_kill_on_disconnect, args=(conn, cmd, done_r), daemon=True
            ).start()
        else:
            os.close(done_r)
        try:
            with contextlib.suppress(OSError):
                send_frame(conn, {"ok": True, "pid": cmd.process.pid(), "token": session.token})
            end: dict[str, Any]
            try:
                cmd.wait()
                end = {"event": "exit", "exit_code": 0}
            except ExitError as err:
                end = {"event": "exit", "exit_code": err.exit_code}
            except Exception as err:
                state = cmd.exit_state
                end = {"event": "exit", "exit_code": state.exit_code, "error": _one_line(err)}
                if not state.exited:
                    end = {"event": "error", "error": _one_line(err), "kind": error_kind(err)}
        finally:
            os.close(done_w)  # the disconnect watcher ends
            with self._lock:
                self._sessions.pop(session.token, None)
            if stdin is not None:
                stdin.cut()
            for file in files:
                file.close()
        with contextlib.suppress(OSError):
            send_frame(conn, end)
        return None

    def _session(self, request: dict[str, Any]) -> _Session:
        with self._lock:
            session = self._sessions.get(_token(request))
        if session is None:
            raise NotFoundError("request.token: no such process (it has exited)")
        return session

    def _signal_process(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        session = self._session(request)
        sig = _int(request, "signal", 1, 64)
        process = session.cmd.process
        delivered = process.signal(background(), sig) if process is not None else False
        return {"delivered": delivered}

    def _resize(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        session = self._session(request)
        width, height = _int(request, "width", 1, 65535), _int(request, "height", 1, 65535)
        if session.cmd.process is not None:
            session.cmd.process.resize_console(background(), width, height)
        return {}

    def _close_stdin(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        session = self._session(request)
        if session.stdin is not None:
            session.stdin.cut()  # the relay then closes the process's stdin
        elif session.cmd.process is not None:
            session.cmd.process.close_stdin(background())
        return {}

    def _delete(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        container_id = _id(request)
        force = _flag(request, "force")
        with self._devices:
            hosted = self._hosted(container_id)
            state = hosted.container.state_type().name
            if state in ("running", "paused") and not force:
                raise StateError(f"container {container_id} is {state}; use delete -f")
            self._release(container_id, hosted, all_resources=True)
            if container_id == self._sandbox:
                with self._lock:
                    self._pod_over = True  # the VM ends once this reply is sent
        log.info("deleted container %s", container_id)
        return {}

    def _running(self, request: dict[str, Any]) -> tuple[str, VMContainer]:
        container_id = _id(request)
        return container_id, self._hosted(container_id).container

    def _pause(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        """Freeze the container's processes (the guest's ``runc pause``)."""
        _, container = self._running(request)
        container.pause(background())
        return {}

    def _resume(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        """Thaw them (the guest's ``runc resume``)."""
        _, container = self._running(request)
        container.resume(background())
        return {}

    def _update(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        """New resource limits: ``flags`` (runc update's ``--name=value``), ``resources``
        (an OCI LinuxResources object), either or both."""
        _, container = self._running(request)
        flags = request.get("flags", [])
        if not isinstance(flags, list) or len(flags) > 32:
            raise InvalidArgumentError("request.flags: not a list of at most 32 flags")
        for flag in flags:
            name = flag[2:].partition("=")[0] if isinstance(flag, str) else ""
            if not isinstance(flag, str) or not flag.startswith("--") or "=" not in flag:
                raise InvalidArgumentError(f"request.flags: {flag!r} is not --name=value")
            if name not in UPDATE_FLAGS:
                raise InvalidArgumentError(f"request.flags: {flag!r}: runc update has no --{name}")
        resources: dict[str, Any] | None = None
        if request.get("resources") is not None:
            try:
                checked = msgspec.convert(request["resources"], oci.LinuxResources)
            except msgspec.ValidationError as err:
                raise InvalidArgumentError(f"request.resources: {err}") from None
            resources = msgspec.json.decode(msgspec.json.encode(checked))
        if not flags and resources is None:
            raise InvalidArgumentError("request: no flags and no resources: nothing to update")
        container.update(background(), list(flags), resources)
        return {}

    def _list(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> Any:
        with self._lock:
            hosted = list(self._containers.items())
        return {
            "containers": [
                {"id": cid, "state": h.container.state_type().name, "owner": h.container.owner}
                for cid, h in hosted
            ]
        }

    # -- release ------------------------------------------------------------------

    def _release(self, container_id: str, hosted: _Hosted, *, all_resources: bool) -> None:
        """Stop the container and release what it holds; its row goes last."""
        container = hosted.container
        if container.state_type().name == "running":
            with contextlib.suppress(HcsociError):
                container.terminate(background())
        container.close()
        vm = self.vm if self.vm.is_running() else None
        release_resources(background(), hosted.resources, vm, all_resources or vm is None)
        container_table.delete(self._store, container_id)
        with self._lock:
            self._containers.pop(container_id, None)

    def _release_all(self) -> None:
        """At the end: every hosted container, then the VM (unless it is the user's)."""
        with self._devices:
            with self._lock:
                hosted = list(self._containers.items())
            for container_id, one in hosted:
                try:
                    # A VM about to close takes its shares with it (all=False, as the seed).
                    self._release(container_id, one, all_resources=self.persistent)
                except Exception as err:
                    log.error("releasing container %s failed: %s", container_id, err)
            if self.persistent:
                self.vm.detach()
            else:
                self.vm.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _kill_on_disconnect(conn: socket.socket, cmd: Cmd, done: int) -> None:
    """SIGKILL ``cmd``'s process when its client hangs up first (it sends nothing after its
    request, so the connection turning readable means closed); ``done`` closes at its exit."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLRDHUP)
        poller.register(done, select.POLLIN)
        events = dict(poller.poll())
        if done not in events and cmd.process is not None:
            log.info("the client of process %s hung up: killing it", cmd.process.pid())
            with contextlib.suppress(HcsociError, OSError):
                cmd.process.kill(background())
    finally:
        os.close(done)


def _report(fd: int | None, line: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def _log_to(vm: UtilityVM) -> None:
    """Send this process's stdout, stderr and log records to ``controller.log`` in the VM's dir."""
    fd = os.open(
        vm.state_dir / "controller.log",
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    faulthandler.enable()


def _open_handed_over(uvm_id: str) -> UtilityVM:
    check_id(uvm_id, "--attach")
    rows = open_store().query("SELECT controller_pid FROM vms WHERE id = ?", (uvm_id,))
    if not rows:
        raise NotFoundError(f"no utility VM with id {uvm_id!r}")
    if int(rows[0]["controller_pid"]) != 0:
        raise StateError(
            f"utility VM {uvm_id} belongs to a process (pid {rows[0]['controller_pid']}), "
            "not to the user: only a VM made by `hcsoci uvm create` can be attached"
        )
    return open_vm(background(), uvm_id)


def main(argv: list[str] | None = None) -> None:
    """The controller process (see the module docs)."""
    parser = argparse.ArgumentParser(prog="python -m hcsoci.uvm.service")
    parser.add_argument("--ready-fd", type=int, default=None)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--options", help="UVMOptions as JSON: make and boot a new VM")
    group.add_argument("--attach", help="the id of a handed-over VM to serve")
    args = parser.parse_args(argv)
    if os.fork() > 0:  # the creator reaps this parent at once; the controller is nobody's child
        os._exit(0)
    ready_fd: int | None = args.ready_fd
    service: VMService | None = None
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        if args.options is not None:
            fields = json.loads(args.options)
            if not isinstance(fields, dict):
                raise InvalidArgumentError("--options: not a JSON object")
            known = UVMOptions.__dataclass_fields__
            unknown = sorted(set(fields) - set(known))
            if unknown:
                raise InvalidArgumentError(f"--options: unknown fields {unknown}")
            vm = create(background(), UVMOptions(**fields))
            try:
                _log_to(vm)
            except BaseException:
                vm.close()
                raise
            vm.start(background())  # a VM that fails to start is closed by start
            service = VMService(vm, persistent=False)
        else:
            vm = _open_handed_over(args.attach)
            _log_to(vm)
            service = VMService(vm, persistent=True)
        signal.signal(signal.SIGTERM, lambda signum, frame: service.stop() if service else None)
        log.info("controller of utility VM %s serving (pid %d)", vm.id(), os.getpid())

        def ready() -> None:
            nonlocal ready_fd
            _report(ready_fd, f"ready {os.getpid()} {vm.id()}")
            ready_fd = None

        service.serve(ready)
    except BaseException as err:
        _report(ready_fd, f"error {_one_line(err)}")
        if not isinstance(err, HcsociError):
            log.exception("controller failed")
        logging.shutdown()
        os._exit(1)
    log.info("controller ended")
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
