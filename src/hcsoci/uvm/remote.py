"""Containers of a utility VM from any process: the client of the VM's controller process.

A VM container lives in the controller process that drives its VM
(:mod:`hcsoci.uvm.service`).  Here is what other processes use:

* :func:`start_controller` spawns a controller (a new VM, or one ``hcsoci uvm
  create`` handed over) and waits until it serves, or raises its one-line error;
* :func:`create_container` creates a container through a controller (starting
  one for a new VM when no VM is named) and returns a :class:`RemoteContainer`;
* :func:`open_remote_container` (what :func:`hcsoci.container.open_container`
  returns for a VM container) gives a :class:`RemoteContainer` for an id;
* :class:`RemoteContainer` is a ``cow.Container`` and its processes are
  :class:`RemoteProcess` (``cow.Process``), so ``hcsoci.command(container, ...)``
  works on it: their stdio are pipes of this process whose other ends (or
  descriptors a ``Cmd`` offers, as they are) went to the controller, which
  relays them to and from the guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec

from hcsoci import container_table, oci
from hcsoci.context import Context
from hcsoci.controller import controller_alive
from hcsoci.cow import Stdio
from hcsoci.errors import HcsociError, NotFoundError, StateError
from hcsoci.interpreter import module_command
from hcsoci.lifecycle import split_process_config
from hcsoci.paths import check_id
from hcsoci.pipes import PipeEnd
from hcsoci.properties import ContainerProperties
from hcsoci.store import Store, open_store
from hcsoci.uvm.channel import (
    SOCKET_NAME,
    ChannelError,
    connect_socket,
    error_from_reply,
    recv_frame,
    send_frame,
)
from hcsoci.uvm.options import UVMOptions

__all__ = [
    "ControllerClient",
    "ControllerError",
    "RemoteContainer",
    "RemoteProcess",
    "create_container",
    "delete_container",
    "open_remote_container",
    "start_controller",
]

CONNECT_TIMEOUT = 10.0
"""Seconds to connect to a controller and send a request."""

READY_MARGIN = 60.0
"""Seconds a new controller gets beyond its VM's ``boot_timeout`` to say it serves."""


class ControllerError(HcsociError):
    """A VM's controller process cannot be reached, or broke off a conversation."""


class ControllerClient:
    """Talks to the controller of utility VM ``vm_id`` at ``socket_path``: one connection a call."""

    def __init__(self, vm_id: str, socket_path: Path) -> None:
        self.vm_id = vm_id
        self.socket_path = socket_path

    @classmethod
    def for_vm(cls, vm_id: str, store: Store | None = None) -> ControllerClient:
        """The client of a recorded VM's controller (NotFoundError for an unknown VM)."""
        check_id(vm_id, "VM id")
        rows = (store or open_store()).query("SELECT state_dir FROM vms WHERE id = ?", (vm_id,))
        if not rows:
            raise NotFoundError(f"no utility VM with id {vm_id!r}")
        return cls(vm_id, Path(rows[0]["state_dir"]) / SOCKET_NAME)

    def connect(self) -> socket.socket:
        """A connection to the controller; ControllerError naming why there is none."""
        try:
            return connect_socket(self.socket_path, CONNECT_TIMEOUT)
        except FileNotFoundError:
            raise ControllerError(
                f"utility VM {self.vm_id} has no controller process "
                f"({self.socket_path} does not exist)"
            ) from None
        except ConnectionRefusedError:
            raise ControllerError(
                f"the controller process of utility VM {self.vm_id} is gone "
                f"({self.socket_path} refuses connections); `hcsoci gc` releases what it left"
            ) from None
        except OSError as err:
            raise ControllerError(
                f"cannot reach the controller of utility VM {self.vm_id} at "
                f"{self.socket_path}: {err.strerror or err}"
            ) from None

    def request(
        self, sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
    ) -> dict[str, Any]:
        """Send ``message`` on ``sock`` and return the reply (raising the error it reports)."""
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            send_frame(sock, message, fds)
            sock.settimeout(None)
            reply = recv_frame(sock)
        except (OSError, ChannelError) as err:
            raise ControllerError(
                f"utility VM {self.vm_id}: the controller broke off {message.get('op')!r}: {err}"
            ) from None
        if reply is None:
            raise ControllerError(
                f"utility VM {self.vm_id}: the controller closed the connection without an answer "
                f"to {message.get('op')!r} (did it die?)"
            )
        if reply.get("ok") is not True:
            raise error_from_reply(reply)
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request ``op`` with ``args``; its reply."""
        with self.connect() as sock:
            return self.request(sock, {"op": op, **args})

    def create(
        self,
        container_id: str,
        spec: oci.Spec,
        owner: str = "",
        networks: tuple[str, ...] = (),
        pod: dict[str, Any] | None = None,
    ) -> RemoteContainer:
        """Create a container in the VM (as ``create_container`` with ``hosting_system``).

        ``pod``: ``{"role": "sandbox"}`` for a pod's sandbox (the first container
        of a new VM; deleting it ends the VM, with any container of the pod
        still there), or ``{"role": "container", "sandbox": ID, "join": [...]}``
        for a container of that pod, which shares the namespaces ``join`` names
        (``network`` always; ``ipc``, ``uts``, ``pid``) with the sandbox's init.
        """
        args: dict[str, Any] = {"pod": pod} if pod is not None else {}
        self.call(
            "create",
            id=container_id,
            owner=owner,
            networks=list(networks),
            spec=json.loads(oci.encode_spec(spec)),
            **args,
        )
        return self.container(container_id)

    def container(self, container_id: str) -> RemoteContainer:
        """A proxy of one of the VM's containers."""
        reply = self.call("get", id=check_id(container_id, "container id"))
        spec = oci.decode_spec(reply["spec"])
        return RemoteContainer(self, container_id, spec, str(reply.get("owner", "")))

    def list(self) -> list[dict[str, Any]]:
        """The VM's containers: ``id``, ``state``, ``owner``."""
        return cast(list[dict[str, Any]], self.call("list")["containers"])


def start_controller(
    options: UVMOptions | None = None, *, attach: str = "", timeout: float | None = None
) -> ControllerClient:
    """Spawn a VM's controller process and wait until it serves.

    With ``options``: a new VM, booted by the controller (which is recorded as
    its controller).  With ``attach``: the id of a VM handed over to the user
    (``hcsoci uvm create``), which the controller serves until the VM stops.
    The controller inherits this process's environment (``HCSOCI_ROOT``,
    ``HCSOCI_ASSETS``...).  Its failure to start raises its one-line error.
    """
    if (options is None) == (not attach):
        raise ValueError("start_controller: give options or attach, one of them")
    if options is not None:
        options = options.validated()
        what = ["--options", json.dumps(vars(options))]
        wait = options.boot_timeout + READY_MARGIN
    else:
        check_id(attach, "VM id")
        what = ["--attach", attach]
        wait = READY_MARGIN
    wait = timeout if timeout is not None else wait
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        command = module_command("hcsoci.uvm.service", "--ready-fd", str(write_end), *what)
        first = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=write_end,  # a traceback before its log is open says why
            pass_fds=(write_end,),
            start_new_session=True,
        )
        os.close(write_end)
        write_end = -1
        first.wait()  # it forks the controller and exits at once
        text = _read_until_closed(read_end, wait)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    lines = text.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if last.startswith("ready "):
        parts = last.split()
        if len(parts) == 3:
            return ControllerClient.for_vm(parts[2])
    if last.startswith("error "):
        raise ControllerError(f"VM controller: {last.removeprefix('error ')}")
    detail = " ".join(line.strip() for line in lines[-3:]) or "it exited without a word"
    raise ControllerError(f"VM controller did not start: {detail}")


def _read_until_closed(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ControllerError(f"VM controller not ready after {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        if sum(map(len, chunks)) > 1 << 20:
            return b"".join(chunks)


def _served_client(vm_id: str) -> ControllerClient:
    """The client of ``vm_id``'s controller, starting one for a handed-over VM without one."""
    client = ControllerClient.for_vm(vm_id)
    try:
        client.call("hello")
        return client
    except ControllerError:
        pass
    return start_controller(attach=vm_id)


def create_container(
    ctx: Context,
    container_id: str,
    spec: oci.Spec,
    *,
    vm: str = "",
    owner: str = "",
    networks: tuple[str, ...] = (),
    vm_options: UVMOptions | None = None,
) -> RemoteContainer:
    """Create a container in utility VM ``vm`` through its controller, or in a new VM.

    Without ``vm``, a controller is started for a new VM (``vm_options``, else
    the defaults); that controller ends with the VM's last container.  A
    handed-over VM without a controller gets one, which keeps serving it.
    """
    ctx.check()
    check_id(container_id, "container id")
    client = _served_client(vm) if vm else start_controller(vm_options or UVMOptions())
    return client.create(container_id, spec, owner, networks)


def open_remote_container(container_id: str, store: Store | None = None) -> RemoteContainer:
    """A proxy of the VM container ``container_id``, recorded in the state store."""
    check_id(container_id, "container id")
    store = store or open_store()
    row = container_table.get(store, container_id)
    if row is None or not row.host:
        raise NotFoundError(f"container id: {container_id!r} does not exist")
    if row.state == "creating" and not controller_alive(row.controller_pid, row.controller_start):
        raise StateError(f"container {container_id}: its creation was cut short; run `hcsoci gc`")
    try:
        return ControllerClient.for_vm(row.host, store).container(container_id)
    except ControllerError as err:
        raise ControllerError(f"container {container_id}: {err}") from None


def delete_container(container_id: str, force: bool = False, store: Store | None = None) -> None:
    """Release the VM container ``container_id`` through its controller."""
    open_remote_container(container_id, store).delete(force=force)


_STREAM_NAMES = ("stdin", "stdout", "stderr")


@dataclass
class _Streams:
    """The descriptors sent for a process, and the ends this side keeps."""

    flags: list[bool]
    sent: list[int]
    close_after_send: list[int]
    kept: list[PipeEnd | None]


def _streams(
    pipes: tuple[bool, bool, bool], offered: tuple[int | None, ...], tty: bool
) -> _Streams:
    streams = _Streams([False, False, False], [], [], [None, None, None])
    try:
        for index in range(3):
            if not pipes[index] or (index == 2 and tty):
                continue
            streams.flags[index] = True
            fd = offered[index] if index < len(offered) else None
            if fd is not None and not tty:
                streams.sent.append(fd)  # handed over as it is: the controller relays it
                continue
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            mine, theirs = (write_end, read_end) if index == 0 else (read_end, write_end)
            streams.kept[index] = PipeEnd(mine, writable=index == 0, name=_STREAM_NAMES[index])
            streams.sent.append(theirs)
            streams.close_after_send.append(theirs)
    except BaseException:
        _close_streams(streams)
        raise
    return streams


def _close_streams(streams: _Streams) -> None:
    for fd in streams.close_after_send:
        with contextlib.suppress(OSError):
            os.close(fd)
    streams.close_after_send.clear()
    for file in streams.kept:
        if file is not None:
            file.close()


class RemoteContainer:
    """A container in a utility VM, driven through the VM's controller (``cow.Container``).

    ``spec`` is the container's spec as the guest runs it.  The controller
    keeps the container's lifecycle: this handle holds no state of its own,
    and any number of handles (in any processes) may drive one container.
    """

    def __init__(self, client: ControllerClient, container_id: str, spec: oci.Spec, owner: str):
        self.client = client
        self._id = container_id
        self.spec = spec
        self.owner = owner

    def __repr__(self) -> str:
        return f"<RemoteContainer {self._id} in {self.client.vm_id}>"

    @property
    def vm_id(self) -> str:
        """The id of the utility VM the container lives in."""
        return self.client.vm_id

    # -- cow.ProcessHost --

    def id(self) -> str:
        """The container's id."""
        return self._id

    def os(self) -> str:
        """``linux``."""
        return "linux"

    def is_oci(self) -> bool:
        """True: ``create_process`` takes an ``oci.Process`` (or None for the init)."""
        return True

    def create_process(self, ctx: Context, config: Any) -> RemoteProcess:
        """Run a process in the container (None: its init, with relayed stdio), as any container.

        Offered descriptors (``stdio_fds``) are taken as they are unless the
        process has a terminal; the other streams asked for are pipes.
        """
        ctx.check()
        process, pipes, offered = split_process_config(config)
        if process is not None:
            tty = bool(process.terminal)
        else:
            tty = bool(self.spec.process is not None and self.spec.process.terminal)
        streams = _streams(pipes, offered, tty)
        sock: socket.socket | None = None
        try:
            sock = self.client.connect()
            reply = self.client.request(
                sock,
                {
                    "op": "exec",
                    "id": self._id,
                    "process": None if process is None else msgspec.to_builtins(process),
                    "streams": streams.flags,
                },
                streams.sent,
            )
        except BaseException:
            if sock is not None:
                sock.close()
            _close_streams(streams)
            raise
        for fd in streams.close_after_send:
            os.close(fd)
        streams.close_after_send.clear()
        stdio = cast(Stdio, tuple(streams.kept))
        return RemoteProcess(self, sock, str(reply["token"]), int(reply["pid"]), stdio, tty)

    # -- cow.Container --

    def start(self, ctx: Context) -> None:
        """Run the spec's process as the container's init; its output goes to the log."""
        ctx.check()
        self.client.call("start", id=self._id)

    def signal(self, ctx: Context, sig: int, all_processes: bool = False) -> None:
        """Send ``sig`` to the running init (``runc kill``; ``all_processes``: to every one)."""
        ctx.check()
        self.client.call("kill", id=self._id, signal=int(sig), all=all_processes)

    def shutdown(self, ctx: Context) -> None:
        """SIGTERM to the init."""
        self.signal(ctx, signal.SIGTERM)

    def terminate(self, ctx: Context) -> None:
        """SIGKILL to the init: the container stops."""
        self.signal(ctx, signal.SIGKILL)

    def wait(self) -> None:
        """Block until the init has exited."""
        self.client.call("wait", id=self._id)

    def close(self) -> None:
        """Nothing to release: the controller holds the container."""

    def properties(self, ctx: Context) -> ContainerProperties:
        """State, the init's guest pid, its processes and its cgroup's figures."""
        ctx.check()
        data = self.client.call("properties", id=self._id)["properties"]
        known = ContainerProperties.__dataclass_fields__
        return ContainerProperties(**{k: v for k, v in data.items() if k in known})

    def processes(self, ctx: Context) -> list[tuple[int, str]]:
        """(guest pid, command line) of each of the container's processes."""
        ctx.check()
        found = self.client.call("processes", id=self._id)["processes"]
        return [(int(p["pid"]), str(p["command"])) for p in found]

    def pause(self, ctx: Context) -> None:
        """Freeze every process of the container (its cgroup in the guest)."""
        ctx.check()
        self.client.call("pause", id=self._id)

    def resume(self, ctx: Context) -> None:
        """Thaw what :meth:`pause` froze."""
        ctx.check()
        self.client.call("resume", id=self._id)

    def update(
        self, ctx: Context, flags: list[str] | None = None, resources: dict[str, Any] | None = None
    ) -> None:
        """New limits, as ``runc update``: ``flags`` its ``--name=value`` tokens
        (``["--memory=64m"]``), ``resources`` an OCI LinuxResources object."""
        ctx.check()
        self.client.call("update", id=self._id, flags=list(flags or []), resources=resources)

    def delete(self, ctx: Context | None = None, force: bool = False) -> None:
        """Release the container and everything it holds (``force``: even while it runs)."""
        if ctx is not None:
            ctx.check()
        self.client.call("delete", id=self._id, force=force)

    def __enter__(self) -> RemoteContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteProcess:
    """A process of a :class:`RemoteContainer` (``cow.Process``).

    Its stdio are pipes of this process (None for a stream handed over or not
    asked for).  The request's connection stays open until the controller
    reports the exit; signals and resizes are requests of their own.
    """

    def __init__(
        self,
        container: RemoteContainer,
        sock: socket.socket,
        token: str,
        pid: int,
        stdio: Stdio,
        tty: bool,
    ) -> None:
        self._container = container
        self._sock = sock
        self._token = token
        self._pid = pid
        self._stdio = stdio
        self._tty = tty
        self._exit_code: int | None = None
        self._failure: HcsociError | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RemoteProcess {self._pid} in {self._container.id()}>"

    def pid(self) -> int:
        """The pid of the process's ``runc`` in the guest."""
        return self._pid

    def stdio(self) -> Stdio:
        """(stdin, stdout, stderr): pipes of this process, or None."""
        return self._stdio

    def _control(self, op: str, **args: Any) -> dict[str, Any]:
        return self._container.client.call(op, token=self._token, **args)

    def close_stdin(self, ctx: Context) -> None:
        """End the process's input: close our stdin pipe (or have the controller stop reading)."""
        stdin = self._stdio[0]
        if stdin is not None:
            stdin.close()
        elif self._exit_code is None:
            with contextlib.suppress(NotFoundError):
                self._control("close_stdin")

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        """Resize the process's terminal."""
        if not self._tty:
            raise StateError(f"process {self._pid} has no console to resize")
        self._control("resize", width=int(width), height=int(height))

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig``; False when the process had exited already."""
        if self._exit_code is not None:
            return False
        try:
            return bool(self._control("signal_process", signal=int(sig))["delivered"])
        except NotFoundError:
            return False  # exited meanwhile

    def kill(self, ctx: Context) -> bool:
        """Send SIGKILL; False when the process had exited already."""
        return self.signal(ctx, signal.SIGKILL)

    def wait(self) -> None:
        """Block until the controller reports the exit (raises if it broke off)."""
        with self._lock:
            if self._exit_code is not None or self._failure is not None:
                return
            try:
                end = recv_frame(self._sock)
            except (OSError, ChannelError) as err:
                end = None
                reason = str(err)
            else:
                reason = "it closed the connection (did it die?)"
            if end is None or end.get("event") not in ("exit", "error"):
                self._failure = ControllerError(
                    f"utility VM {self._container.vm_id}: lost the controller while process "
                    f"{self._pid} ran: {reason}"
                )
            elif end.get("event") == "error":
                self._failure = error_from_reply(end)
            else:
                self._exit_code = int(end.get("exit_code", -1))
        if self._failure is not None:
            raise self._failure

    def exit_code(self) -> int:
        """The exit code (``128 + N`` for signal N); raises while still running."""
        if self._exit_code is None:
            if self._failure is not None:
                raise self._failure
            if not self._ended():
                raise StateError(f"process {self._pid} in the utility VM is still running")
            self.wait()
        assert self._exit_code is not None
        return self._exit_code

    def _ended(self) -> bool:
        try:
            ready, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def close(self) -> None:
        """Drop the pipes and the connection; the process keeps running in the guest."""
        if self._closed:
            return
        self._closed = True
        for stream in self._stdio:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a wait() blocked on it
        if self._lock.acquire(timeout=5.0):
            self._lock.release()
        with contextlib.suppress(OSError):
            self._sock.close()
