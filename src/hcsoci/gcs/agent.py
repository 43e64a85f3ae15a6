"""The guest agent (GCS): runs inside the utility VM and serves the host's bridge.

It is built into the guest's own root (``/.hcsoci/gcs``, with its bytecode)
and imported by the guest's init with ``python3 -S -I -B``.  It imports as
little as it can (every module costs boot time under TCG): a few stdlib
modules, and :mod:`protocol` from its own directory.  Modules needed only by
rare requests (``subprocess`` for ``mount``) are imported on first use.

One thread multiplexes all IO with epoll: the virtio-serial port and every
process's pipes.  Requests that may block (mounts, waiting for a hot-plugged
disk) run on worker threads and hand their response back through an eventfd.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import sys
import termios
import time
from collections import deque

# Imports cost boot time under TCG: typing, contextlib and threading stay
# out of the startup path (threading is imported by the first slow request).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

if __package__:
    from hcsoci.gcs import protocol, runclog, terminal, users
else:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import protocol  # type: ignore[import-not-found,no-redef]
    import runclog  # type: ignore[import-not-found,no-redef]
    import terminal  # type: ignore[import-not-found,no-redef]
    import users  # type: ignore[import-not-found,no-redef]

_READ_CHUNK = 1024 * 1024
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1024 * 1024
# Host-to-guest data in flight per stdin stream.  Kept well below the 512 KiB
# of receive buffers the guest driver posts on the port: when the host fills
# them, QEMU throttles the port and we saw it stall for good under TCG.
_STDIN_WINDOW = 128 * 1024
_PORT_CLASS = "/sys/class/virtio-ports"
_RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2]): add bytes to the pool and credit them
_RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the CRNG from the pool now


def log(message: str) -> None:
    """A line on the guest console (the VM's console log on the host)."""
    os.write(2, f"hcsoci-gcs: {message}\n".encode(errors="replace"))


class RequestError(Exception):
    """A request failed; the message goes back to the host."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class GuestProcess:
    """A process the agent started, its pipes and its stream credit."""

    def __init__(self, key: int, pid: int, pidfd: int) -> None:
        self.key = key
        self.pid = pid
        self.pidfd = pidfd
        self.status: int | None = None
        self.stdin: int = -1
        self.stdin_buffer = bytearray()
        self.stdin_eof = False
        self.outputs: dict[int, int] = {}  # stream fd (1, 2) -> pipe fd
        self.credit: dict[int, int] = {}
        self.paused: set[int] = set()
        self.console: int = -1  # pty master, for resize
        self.container = ""  # the container whose init (runc run) this is
        self.pid_file = ""  # runc's pid file of the container process it runs
        self.runc_log = ""  # for a runc exec: its --debug JSON log (says the exit status)
        self.exit_sent = False  # the exit went to the host before runc's own (see _watch_exec)


class Agent:
    """The bridge server: one per guest, for the life of the guest."""

    def __init__(self, port_path: str) -> None:
        self.port_path = port_path
        # Blocking: writes wait for the host (whose reader never stops reading);
        # reads happen only when epoll says the port is readable.
        self.port = os.open(port_path, os.O_RDWR | os.O_CLOEXEC)
        self.epoll = select.epoll()
        self.wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self.wakeup, select.EPOLLIN)
        self.inbuf = bytearray()
        self.connected = False
        self.epoll.register(self.port, select.EPOLLIN)
        self.processes: dict[int, GuestProcess] = {}
        self.handlers: dict[int, tuple[GuestProcess, int]] = {}  # fd -> (process, role)
        self.completions: deque[bytes] = deque()
        self.early_exits: deque[tuple[GuestProcess, int]] = deque()
        self.version = 0
        self.vm_id = ""  # the host's id of this VM (a clone learns it at negotiate)
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "create_process": self.op_create_process,
            "signal_process": self.op_signal_process,
            "close_process": self.op_close_process,
            "resize_console": self.op_resize_console,
            "create_container": self.op_create_container,
            "exec_in_container": self.op_exec_in_container,
            "ping": lambda _: {"pid": os.getpid()},
        }
        self.slow_ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "mount": op_mount,
            "unmount": op_unmount,
            "mount_plan9": op_mount_plan9,
            "mount_scsi": op_mount_scsi,
            "mount_pmem": op_mount_pmem,
            "remove_scsi_device": op_remove_scsi_device,
            "mount_overlay": op_mount_overlay,
            "create_netns": op_create_netns,
            "delete_netns": op_delete_netns,
            "add_nic": op_add_nic,
            "shutdown": op_shutdown,
            "signal_container": op_signal_container,
            "signal_container_process": self.op_signal_container_process,
            "container_state": self.op_container_state,
            "delete_container": self.op_delete_container,
            "pause_container": op_pause_container,
            "resume_container": op_resume_container,
            "update_container": op_update_container,
        }
        # Started in the loop, answered from a worker thread once the second part returns.
        self.split_ops: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[Any], Any]]] = {
            "start_container": (self.op_start_container, self.await_container_start),
        }
        self.containers: dict[str, str] = {}  # container id -> bundle

    # -- the loop -----------------------------------------------------------

    def serve(self) -> None:
        """Serve the bridge until the guest stops."""
        with open("/proc/uptime") as uptime:
            since_boot = uptime.read().split()[0]
        log(f"ready on {self.port_path} (pid {os.getpid()}, {since_boot} s after boot)")
        disconnected = False
        while True:
            # Parked, the port wakes the loop when the host's side opens (edge-triggered);
            # the timeout is only a safety net.
            timeout = 1.0 if disconnected else -1
            for fd, events in self.epoll.poll(timeout):
                if fd == self.port:
                    if disconnected:
                        continue  # a change on the parked port: _host_back looks below
                    # A closed host end reads as EOF (EPOLLIN and EPOLLHUP together):
                    # read what is left, then park the port until a host connects.
                    if events & select.EPOLLIN and self._read_port():
                        continue
                    if events & (select.EPOLLHUP | select.EPOLLIN):
                        disconnected = True
                        self._host_gone()
                elif fd == self.wakeup:
                    os.eventfd_read(self.wakeup)
                    while self.completions:
                        self._send(self.completions.popleft())
                    while self.early_exits:
                        self._send_early_exit(*self.early_exits.popleft())
                else:
                    self._on_fd(fd, events)
            if disconnected and self._host_back():
                disconnected = False

    def _host_gone(self) -> None:
        # The host closed its end: park the port until a host connects again.
        log("host disconnected")
        # EPOLLHUP stays set while no host is connected: level-triggered, it would
        # spin the loop.  Edge-triggered, the port reports only changes, such as
        # the host's side opening (virtio_console wakes its waiters then).
        self.epoll.modify(self.port, select.EPOLLOUT | select.EPOLLET)
        self.inbuf.clear()
        self.connected = False
        for process in list(self.processes.values()):
            self._drop_process(process)

    def _host_back(self) -> bool:
        poller = select.poll()
        poller.register(self.port, select.POLLIN)
        ready = poller.poll(0)
        if ready and ready[0][1] & select.POLLHUP:
            return False
        self.epoll.modify(self.port, select.EPOLLIN)
        log("host connected")
        return True

    def _read_port(self) -> bool:
        """Read and dispatch what the host sent; False at end-of-file (the host is gone)."""
        try:
            chunk = os.read(self.port, _READ_CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.inbuf += chunk
        buffer = self.inbuf
        offset = 0
        try:
            while len(buffer) - offset >= protocol.HEADER_SIZE:
                frame_type, frame_id, length = protocol.parse_header(buffer, offset)
                start = offset + protocol.HEADER_SIZE
                if start + length > len(buffer):
                    break
                payload = bytes(buffer[start : start + length])
                offset = start + length
                self._dispatch(frame_type, frame_id, payload)
        except protocol.ProtocolError as err:
            log(f"protocol error, dropping input: {err}")
            offset = len(buffer)
        del buffer[:offset]
        return True

    def _dispatch(self, frame_type: int, frame_id: int, payload: bytes) -> None:
        if frame_type == protocol.REQUEST:
            self._request(frame_id, protocol.parse_message(payload))
        elif frame_type == protocol.DATA:
            self._stdin_data(frame_id, payload)
        elif frame_type == protocol.WINDOW:
            self._window(frame_id, protocol.parse_credit(payload))
        elif frame_type == protocol.EOF:
            self._stdin_eof(frame_id)
        else:
            log(f"unexpected frame type {frame_type} from the host")

    def _send(self, frame: bytes) -> None:
        if self.connected:
            self._write_all(frame)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.port, view) :]
        except OSError as err:
            # The host went away mid-frame; _host_gone resets the session.
            log(f"port write failed: {err}")
            self.connected = False

    # -- requests -----------------------------------------------------------

    def _request(self, request_id: int, body: dict[str, Any]) -> None:
        op = body.get("op")
        if op == "negotiate":
            self._negotiate(request_id, body)
            return
        if not self.connected:
            return
        handler = self.ops.get(str(op))
        if handler is not None:
            self._send(_response(request_id, lambda: handler(body)))
            return
        slow = self.slow_ops.get(str(op))
        split = self.split_ops.get(str(op))
        if split is not None:
            first: list[Any] = []

            def begin() -> dict[str, Any]:
                first.append(split[0](body))
                return {}

            frame = _response(request_id, begin)
            if not first:
                self._send(frame)  # the first part failed
                return
            started, finish = first[0], split[1]
            slow = lambda _: finish(started)  # noqa: E731
        if slow is None:
            self._send(_response(request_id, lambda: _unknown(op)))
            return

        def run() -> None:
            self.completions.append(_response(request_id, lambda: slow(body)))
            os.eventfd_write(self.wakeup, 1)

        import threading

        threading.Thread(target=run, name=f"gcs-{op}", daemon=True).start()

    def _negotiate(self, request_id: int, body: dict[str, Any]) -> None:
        # A new host session: forget the old one's streams.
        for process in list(self.processes.values()):
            self._drop_process(process)
        self.connected = True
        common = set(body.get("versions", [])) & set(protocol.PROTOCOL_VERSIONS)
        if not common:
            self._send(
                protocol.message_frame(
                    protocol.RESPONSE,
                    request_id,
                    {
                        "error": {
                            "type": "version",
                            "message": f"no common protocol version: host {body.get('versions')}"
                            f", guest {list(protocol.PROTOCOL_VERSIONS)}",
                            "errno": 0,
                        }
                    },
                )
            )
            return
        self.version = max(common)
        clone = body.get("clone")
        if isinstance(clone, dict):
            self._make_own(clone)
        boot = ""
        if body.get("template"):
            # Every clone would pay for these on its first disk or NIC: pay once here.
            # And the kernel makes its boot id on first read: a template leaves it
            # unread, so each clone makes its own from its freshly reseeded pool.
            load_device_modules()
        else:
            with open("/proc/sys/kernel/random/boot_id") as boot_id:
                boot = boot_id.read().strip()
        result = {
            "version": self.version,
            "pid": os.getpid(),
            "boot_id": boot,
            "vm_id": self.vm_id,
        }
        self._send(protocol.message_frame(protocol.RESPONSE, request_id, {"result": result}))

    def _make_own(self, clone: dict[str, Any]) -> None:
        """Make a guest restored from a template (or saved as one) this VM's own.

        Every clone starts from the same memory: the same random pool, the
        clock of the moment the template was saved, no id.  The host sends
        fresh entropy (credited to the pool, then the kernel's CRNG is
        reseeded, so every later random byte differs between clones), its
        wall-clock time and the VM's id.
        """
        seed = bytes.fromhex(str(clone.get("entropy", "")))
        if seed:
            import struct

            with open("/dev/urandom", "wb", buffering=0) as pool:
                info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
                fcntl.ioctl(pool.fileno(), _RNDADDENTROPY, info)
                fcntl.ioctl(pool.fileno(), _RNDRESEEDCRNG)
        if "time_ns" in clone:
            time.clock_settime_ns(time.CLOCK_REALTIME, int(clone["time_ns"]))
        self.vm_id = str(clone.get("id", ""))

    def op_create_process(self, body: dict[str, Any]) -> dict[str, Any]:
        key = int(body["key"])
        if key in self.processes:
            raise RequestError(f"process key {key} is in use", errno.EEXIST)
        args = [str(a) for a in body.get("args") or []]
        if not args:
            raise RequestError("args: empty command line", errno.EINVAL)
        window = int(body.get("window") or protocol.DEFAULT_WINDOW)
        with_terminal = bool(body.get("terminal"))
        parent_fds: dict[int, int] = {}
        child_fds: list[int] = []
        try:
            if with_terminal:
                master, slave = os.openpty()
                os.set_inheritable(master, False)
                child_stdio = [slave, slave, slave]
                child_fds.append(slave)
                if body.get("stdin"):
                    parent_fds[0] = os.dup(master)
                if body.get("stdout"):
                    parent_fds[1] = os.dup(master)
                parent_fds[-1] = master
                rows, cols = body.get("console_size") or (0, 0)
                if rows and cols:
                    terminal.set_window_size(master, int(cols), int(rows))
            else:
                null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
                child_fds.append(null)
                child_stdio = [null, null, null]
                if body.get("output_file"):
                    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                    output = os.open(str(body["output_file"]), flags, 0o644)
                    child_fds.append(output)
                    child_stdio[1] = child_stdio[2] = output
                for fd, wanted in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
                    if body.get(wanted):
                        read_end, write_end = os.pipe2(os.O_CLOEXEC)
                        try:  # noqa: SIM105 - contextlib is not worth its import here
                            fcntl.fcntl(read_end, _F_SETPIPE_SZ, _PIPE_SIZE)  # whole frames
                        except OSError:
                            pass
                        if fd == 0:
                            child_stdio[0], parent_fds[0] = read_end, write_end
                            child_fds.append(read_end)
                        else:
                            child_stdio[fd], parent_fds[fd] = write_end, read_end
                            child_fds.append(write_end)
            pid = _spawn(body, args, child_stdio, with_terminal)
        except BaseException:
            for fd in (*parent_fds.values(), *child_fds):
                os.close(fd)
            raise
        for fd in child_fds:
            os.close(fd)
        process = GuestProcess(key, pid, os.pidfd_open(pid))
        self.processes[key] = process
        self.handlers[process.pidfd] = (process, -1)
        self.epoll.register(process.pidfd, select.EPOLLIN)
        process.console = parent_fds.pop(-1, -1)
        if 0 in parent_fds:
            process.stdin = parent_fds[0]
            os.set_blocking(process.stdin, False)
        for fd in (1, 2):
            if fd in parent_fds:
                process.outputs[fd] = parent_fds[fd]
                process.credit[fd] = window
                os.set_blocking(parent_fds[fd], False)
                self.handlers[parent_fds[fd]] = (process, fd)
                self.epoll.register(parent_fds[fd], select.EPOLLIN)
        return {"pid": pid, "stdin_window": _STDIN_WINDOW}

    def op_signal_process(self, body: dict[str, Any]) -> dict[str, Any]:
        process = self._process(body)
        if process.status is not None:
            return {"delivered": False}
        try:
            os.kill(process.pid, int(body["signal"]))
        except ProcessLookupError:
            return {"delivered": False}
        return {"delivered": True}

    def op_close_process(self, body: dict[str, Any]) -> dict[str, Any]:
        process = self.processes.get(int(body["key"]))
        if process is not None:
            self._drop_process(process)
        return {}

    def op_resize_console(self, body: dict[str, Any]) -> dict[str, Any]:
        process = self._process(body)
        if process.console < 0:
            raise RequestError(f"process {process.pid} has no console", errno.ENOTTY)
        width, height = int(body["width"]), int(body["height"])
        terminal.set_window_size(process.console, width, height)
        pid = _read_pid(process.pid_file) if process.pid_file and process.status is None else 0
        if pid:  # runc in the foreground: the container's own pty too (see terminal.py)
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                return {}
            try:
                terminal.resize_held_terminal(pidfd, pid, width, height)
            finally:
                os.close(pidfd)
        return {}

    # -- containers (protocol version 2): runc in the guest ---------------------

    def _bundle(self, body: dict[str, Any]) -> tuple[str, str]:
        container_id = str(body["id"])
        bundle = self.containers.get(container_id)
        if bundle is None:
            raise RequestError(f"no container {container_id!r}", errno.ENOENT)
        return container_id, bundle

    def _runc_process(self, body: dict[str, Any], args: list[str]) -> GuestProcess:
        """Start ``runc`` as a tracked process (the request's key, stdio and terminal)."""
        request = {**body, "args": ["runc", "--root", _RUNC_ROOT, *args]}
        request.update(env=[f"PATH={_PATH}"], cwd="/", user="")
        self.op_create_process(request)
        return self.processes[int(body["key"])]

    def op_create_container(self, body: dict[str, Any]) -> dict[str, Any]:
        container_id, bundle = str(body["id"]), str(body["bundle"])
        if not container_id or "/" in container_id or container_id in self.containers:
            raise RequestError(f"container id {container_id!r} is invalid or in use", errno.EEXIST)
        files = [(os.path.normpath(str(path)), str(text)) for path, text in body.get("files") or []]
        for path, _ in files:
            if not path.startswith(bundle.rstrip("/") + "/"):
                raise RequestError(
                    f"file {path!r} is not inside the bundle {bundle!r}", errno.EINVAL
                )
        _ensure_dir(bundle)
        for path, text in files:  # the container's /etc files, say: no process is needed
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as file:
                file.write(text)
        if body.get("spec") is not None:
            import json

            with open(f"{bundle}/config.json", "w") as config:
                json.dump(body["spec"], config)
        elif not os.path.exists(f"{bundle}/config.json"):
            raise RequestError(f"{bundle}/config.json: no spec", errno.ENOENT)
        self.containers[container_id] = bundle
        return {}

    def op_start_container(self, body: dict[str, Any]) -> tuple[GuestProcess, str, float]:
        container_id, bundle = self._bundle(body)
        if any(p.container == container_id for p in self.processes.values()):
            raise RequestError(f"container {container_id!r} was started already", errno.EBUSY)
        pid_file = f"{bundle}/init.pid"
        for stale in (pid_file, f"{bundle}/runtime.log"):
            try:  # noqa: SIM105 - see the imports
                os.unlink(stale)
            except FileNotFoundError:
                pass
        args = ["--log", f"{bundle}/runtime.log", "run", "--bundle", bundle]
        process = self._runc_process(body, [*args, "--pid-file", pid_file, container_id])
        process.container, process.pid_file = container_id, pid_file
        return process, bundle, float(body.get("timeout") or 60)

    def await_container_start(self, started: tuple[GuestProcess, str, float]) -> dict[str, Any]:
        """On a worker thread: wait for runc's pid file, or say why runc gave up."""
        process, bundle, timeout = started
        deadline = time.monotonic() + timeout
        while True:
            pid = _read_pid(process.pid_file)
            if pid:
                return {"pid": process.pid, "init_pid": pid, "stdin_window": _STDIN_WINDOW}
            if process.status is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        detail = ""
        try:
            with open(f"{bundle}/runtime.log", errors="replace") as runtime_log:
                detail = " ".join(runtime_log.read().splitlines()[-5:])
        except OSError:
            pass
        if process.status is None:
            detail = f"no pid file after {timeout:g} s {detail}".strip()
            try:  # noqa: SIM105 - see the imports
                os.kill(process.pid, 9)
            except OSError:
                pass
        raise RequestError(
            f"runc did not start container {process.container!r}: "
            f"{detail or f'exit status {process.status}'}",
            errno.EIO,
        )

    def op_exec_in_container(self, body: dict[str, Any]) -> dict[str, Any]:
        container_id, bundle = self._bundle(body)
        import json

        base = f"{bundle}/exec/{int(body['key'])}"
        _ensure_dir(f"{bundle}/exec")
        with open(f"{base}.json", "w") as process_json:
            json.dump(body["process"], process_json)
        log_args = ["--log", f"{base}.log", "--log-format", "json", "--debug"]
        args = [*log_args, "exec", "--process", f"{base}.json"]
        process = self._runc_process(body, [*args, "--pid-file", f"{base}.pid", container_id])
        process.pid_file, process.runc_log = f"{base}.pid", f"{base}.log"
        import threading

        watched = os.dup(process.pidfd)
        try:
            threading.Thread(
                target=self._watch_exec, args=(process, watched), name="gcs-exec", daemon=True
            ).start()
        except BaseException:
            os.close(watched)
            raise
        return {"pid": process.pid, "stdin_window": _STDIN_WINDOW}

    def _watch_exec(self, process: GuestProcess, runc_pidfd: int) -> None:
        """On a thread: report an exec's exit as soon as runc reaped the container process.

        ``runc exec`` exits only once the process's stdout and stderr reached
        end of file, which a background child of the process can put off for
        as long as it lives; with ``--debug`` it logs the status first.  Ends
        when that was handed to the loop, or when runc exited.
        """
        try:
            poller = select.poll()
            poller.register(runc_pidfd, select.POLLIN)
            pid = 0
            while not pid:
                pid = _read_pid(process.pid_file)
                if not pid and poller.poll(20):
                    return  # runc exited: the loop reports it
            try:
                target = os.pidfd_open(pid)
            except OSError:
                target = -1
            try:
                if target >= 0:
                    poller.register(target, select.POLLIN)
                    if runc_pidfd in [fd for fd, _ in poller.poll()]:
                        return
                    poller.unregister(target)
                # Between the exit and runc's log record lie microseconds: poll briefly.
                status = runclog.logged_exit_status(process.runc_log, pid)
                while status is None:
                    if poller.poll(10):
                        return  # runc exited
                    status = runclog.logged_exit_status(process.runc_log, pid)
            finally:
                if target >= 0:
                    os.close(target)
            self.early_exits.append((process, status))
            os.eventfd_write(self.wakeup, 1)
        except OSError as err:
            log(f"watching exec {process.key} failed: {err}")
        finally:
            os.close(runc_pidfd)

    def _send_early_exit(self, process: GuestProcess, status: int) -> None:
        if self.processes.get(process.key) is not process or process.status is not None:
            return  # dropped meanwhile, or runc exited and said so itself
        process.exit_sent = True
        body = {"event": "exit", "key": process.key, "status": status}
        self._send(protocol.message_frame(protocol.NOTIFY, 0, body))

    def op_signal_container_process(self, body: dict[str, Any]) -> dict[str, Any]:
        """On a worker thread: signal the container process of a runc (not runc itself)."""
        process = self._process(body)
        sig = int(body["signal"])
        deadline = time.monotonic() + float(body.get("timeout") or 10)
        while process.status is None:
            pid = _read_pid(process.pid_file) if process.pid_file else 0
            target = pid or (process.pid if time.monotonic() > deadline else 0)
            if target:
                try:
                    os.kill(target, sig)
                except ProcessLookupError:
                    return {"delivered": False}
                return {"delivered": True}
            time.sleep(0.05)
        return {"delivered": False}

    def op_container_state(self, body: dict[str, Any]) -> dict[str, Any]:
        return op_container_state(body, self.containers.get(str(body["id"])))

    def op_delete_container(self, body: dict[str, Any]) -> dict[str, Any]:
        """On a worker thread: ``runc delete --force``; the container must be gone after."""
        container_id = str(body["id"])
        import subprocess

        runc = ["runc", "--root", _RUNC_ROOT]
        env = {"PATH": _PATH}
        subprocess.run([*runc, "delete", "--force", container_id], capture_output=True, env=env)
        state = subprocess.run([*runc, "state", container_id], capture_output=True, env=env)
        if state.returncode == 0:
            raise RequestError(f"runc could not delete container {container_id!r}", errno.EBUSY)
        known = self.containers.pop(container_id, None) is not None
        return {"deleted": known}

    def _process(self, body: dict[str, Any]) -> GuestProcess:
        process = self.processes.get(int(body["key"]))
        if process is None:
            raise RequestError(f"no process with key {body['key']}", errno.ESRCH)
        return process

    # -- process streams ----------------------------------------------------

    def _on_fd(self, fd: int, events: int) -> None:
        entry = self.handlers.get(fd)
        if entry is None:
            return
        process, role = entry
        if role == -1:
            self._reap(process)
        elif role == 0:
            self._write_stdin(process)
        else:
            self._read_output(process, role)

    def _read_output(self, process: GuestProcess, fd: int) -> None:
        pipe = process.outputs[fd]
        stream = protocol.stream_id(process.key, fd)
        budget = 4  # frames per wakeup, so that one chatty process cannot starve the rest
        while budget and process.credit[fd] > 0 and self.connected:
            budget -= 1
            limit = min(process.credit[fd], protocol.MAX_DATA_FRAME)
            try:
                data = os.read(pipe, limit)
            except BlockingIOError:
                return
            except OSError as err:
                # EIO is how a pty reports that its last slave closed.
                if err.errno != errno.EIO:
                    log(f"read of process {process.pid} fd {fd} failed: {err}")
                data = b""
            if not data:
                self._close_output(process, fd)
                self._send(protocol.eof_frame(stream))
                return
            process.credit[fd] -= len(data)
            # Two writes, no concatenation: the port takes 32 KiB per write anyway.
            # (splice(2) from the pipe to the port would save the copies, but the
            # virtio console driver can drop spliced data when its queue is full.)
            self._send(protocol.header(protocol.DATA, stream, len(data)))
            self._send(data)
        if process.credit[fd] <= 0:
            self.epoll.unregister(pipe)
            process.paused.add(fd)

    def _close_output(self, process: GuestProcess, fd: int) -> None:
        pipe = process.outputs.pop(fd, -1)
        if pipe < 0:
            return
        if fd not in process.paused:
            self.epoll.unregister(pipe)
        process.paused.discard(fd)
        self.handlers.pop(pipe, None)
        os.close(pipe)

    def _window(self, stream: int, credit: int) -> None:
        key, fd = protocol.split_stream_id(stream)
        process = self.processes.get(key)
        if process is None or fd not in process.outputs:
            return
        process.credit[fd] += credit
        if fd in process.paused and process.credit[fd] > 0:
            process.paused.discard(fd)
            self.epoll.register(process.outputs[fd], select.EPOLLIN)

    def _stdin_data(self, stream: int, data: bytes) -> None:
        key, _ = protocol.split_stream_id(stream)
        process = self.processes.get(key)
        if process is None or process.stdin < 0:
            return
        was_empty = not process.stdin_buffer
        process.stdin_buffer += data
        if was_empty:
            self._write_stdin(process)

    def _stdin_eof(self, stream: int) -> None:
        key, _ = protocol.split_stream_id(stream)
        process = self.processes.get(key)
        if process is None or process.stdin < 0:
            return
        process.stdin_eof = True
        if not process.stdin_buffer:
            self._close_stdin(process)

    def _write_stdin(self, process: GuestProcess) -> None:
        written = 0
        try:
            while process.stdin_buffer:
                n = os.write(process.stdin, process.stdin_buffer[: protocol.MAX_DATA_FRAME])
                del process.stdin_buffer[:n]
                written += n
        except BlockingIOError:
            pass
        except OSError:  # the process closed its stdin: drop what it will never read
            written += len(process.stdin_buffer)
            process.stdin_buffer.clear()
            process.stdin_eof = True
        if written:
            self._send(protocol.window_frame(protocol.stream_id(process.key, 0), written))
        registered = process.stdin in self.handlers
        if process.stdin_buffer and not registered:
            self.handlers[process.stdin] = (process, 0)
            self.epoll.register(process.stdin, select.EPOLLOUT)
        elif not process.stdin_buffer:
            if registered:
                self.handlers.pop(process.stdin)
                self.epoll.unregister(process.stdin)
            if process.stdin_eof:
                self._close_stdin(process)

    def _close_stdin(self, process: GuestProcess) -> None:
        if process.stdin < 0:
            return
        if self.handlers.pop(process.stdin, None) is not None:
            self.epoll.unregister(process.stdin)
        os.close(process.stdin)
        process.stdin = -1

    def _reap(self, process: GuestProcess) -> None:
        _, status = os.waitpid(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        process.status = 128 - code if code < 0 else code
        self.epoll.unregister(process.pidfd)
        self.handlers.pop(process.pidfd, None)
        os.close(process.pidfd)
        process.pidfd = -1
        if process.console >= 0 and 1 not in process.outputs:
            os.close(process.console)
            process.console = -1
        body = {"event": "exit", "key": process.key, "status": process.status}
        if not process.exit_sent:
            self._send(protocol.message_frame(protocol.NOTIFY, 0, body))
        if process.container:
            body = {**body, "event": "container_exit", "id": process.container}
            self._send(protocol.message_frame(protocol.NOTIFY, 0, body))

    def _drop_process(self, process: GuestProcess) -> None:
        self.processes.pop(process.key, None)
        for fd in list(process.outputs):
            self._close_output(process, fd)
        self._close_stdin(process)
        if process.console >= 0:
            os.close(process.console)
            process.console = -1
        if process.pidfd >= 0 and process.exit_sent:
            # A runc exec whose process exited, waiting for the end of output that a
            # background child holds open: nobody reads it any more.
            try:  # noqa: SIM105 - see the imports
                os.kill(process.pid, 9)
            except ProcessLookupError:
                pass
        if process.pidfd >= 0:
            # Still running: it keeps running, but is no longer tracked; reap it
            # later through PID 1 adoption is impossible, so leave the pidfd to
            # a reaper thread.
            self.epoll.unregister(process.pidfd)
            self.handlers.pop(process.pidfd, None)
            pidfd, pid = process.pidfd, process.pid
            process.pidfd = -1
            import threading

            threading.Thread(target=_reap_later, args=(pid, pidfd), daemon=True).start()


_RUNC_ROOT = "/run/gcs/runc"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _read_pid(path: str) -> int:
    try:
        with open(path) as pid_file:
            text = pid_file.read().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _runc(*args: str, data: str | None = None) -> None:
    """The guest's runc on the agent's state root; a failure as a RequestError."""
    _run(["runc", "--root", _RUNC_ROOT, *args], {"PATH": _PATH}, data)


def op_signal_container(body: dict[str, Any]) -> dict[str, Any]:
    """``runc kill`` (its init, or with ``all`` every process of the container)."""
    every = ["--all"] if body.get("all") else []
    _runc("kill", *every, str(body["id"]), str(int(body["signal"])))
    return {}


def op_pause_container(body: dict[str, Any]) -> dict[str, Any]:
    """``runc pause``: freeze every process of the container (its cgroup's freezer)."""
    _runc("pause", str(body["id"]))
    return {}


def op_resume_container(body: dict[str, Any]) -> dict[str, Any]:
    """``runc resume``: thaw what ``pause`` froze."""
    _runc("resume", str(body["id"]))
    return {}


def op_update_container(body: dict[str, Any]) -> dict[str, Any]:
    """``runc update``: ``flags`` (``--memory=...`` tokens, runc's own) and, when given,
    ``resources`` (an OCI LinuxResources object, on runc's stdin as ``-r -``)."""
    flags = [str(flag) for flag in body.get("flags") or []]
    if any(not flag.startswith("--") or "=" not in flag for flag in flags):
        raise RequestError(f"update flags {flags!r}: not --name=value tokens", errno.EINVAL)
    data = None
    if body.get("resources") is not None:
        import json

        flags += ["--resources", "-"]
        data = json.dumps(body["resources"])
    _runc("update", *flags, "--", str(body["id"]), data=data)
    return {}


def op_container_state(body: dict[str, Any], bundle: str | None) -> dict[str, Any]:
    """``runc state`` and ``runc ps``: status, init pid and every process's pid, and
    the memory and CPU time of the container's cgroup while it runs.

    ``runc run`` deletes its container when the init exits, so a container the
    agent knows (``bundle``) but runc does not is ``stopped`` once it started,
    ``created`` before.
    """
    import json
    import subprocess

    runc, env = ["runc", "--root", _RUNC_ROOT], {"PATH": _PATH}
    container_id = str(body["id"])
    state = subprocess.run([*runc, "state", container_id], capture_output=True, env=env)
    if state.returncode != 0 and bundle is not None:
        status = "stopped" if os.path.exists(f"{bundle}/init.pid") else "created"
        return {"status": status, "pid": 0, "bundle": bundle, "processes": []}
    if state.returncode != 0:
        message = state.stderr.decode(errors="replace").strip()
        raise RequestError(f"container {container_id!r}: {message}", errno.ENOENT)
    found = json.loads(state.stdout)
    processes: list[int] = []
    if found.get("status") in ("running", "paused"):
        ps = subprocess.run(
            [*runc, "ps", "--format", "json", container_id], capture_output=True, env=env
        )
        if ps.returncode == 0:
            processes = [int(pid) for pid in json.loads(ps.stdout) or []]
    pid = int(found.get("pid") or 0)
    memory, cpu = _cgroup_usage(pid) if processes else (None, None)
    return {
        "status": str(found.get("status") or ""),
        "pid": pid,
        "bundle": str(found.get("bundle") or ""),
        "processes": processes,
        "memory_usage_bytes": memory,
        "cpu_usage_ns": cpu,
    }


def _cgroup_usage(pid: int) -> tuple[int | None, int | None]:
    """(memory bytes, CPU ns) of ``pid``'s cgroup; the guest mounts cgroup v2 only."""
    try:
        with open(f"/proc/{pid}/cgroup") as membership:
            path = membership.read().strip().split("::", 1)[1]
    except (OSError, IndexError):
        return None, None
    directory = f"/sys/fs/cgroup{path}"
    memory = cpu = None
    try:
        with open(f"{directory}/memory.current") as current:
            memory = int(current.read())
        with open(f"{directory}/cpu.stat") as cpu_stat:
            for line in cpu_stat:
                key, value = line.split()
                if key == "usage_usec":
                    cpu = int(value) * 1000
    except (OSError, ValueError):
        pass
    return memory, cpu


def _reap_later(pid: int, pidfd: int) -> None:
    try:
        select.select([pidfd], [], [])
        os.waitpid(pid, 0)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _response(request_id: int, call: Callable[[], dict[str, Any]]) -> bytes:
    try:
        body: dict[str, Any] = {"result": call()}
    except RequestError as err:
        body = {"error": {"type": "request", "message": str(err), "errno": err.errno}}
    except OSError as err:
        body = {"error": {"type": "os", "message": str(err), "errno": err.errno or 0}}
    except (KeyError, ValueError, TypeError) as err:
        body = {"error": {"type": "invalid", "message": f"bad request: {err!r}", "errno": 22}}
    return protocol.message_frame(protocol.RESPONSE, request_id, body)


def _unknown(op: object) -> dict[str, Any]:
    raise RequestError(f"unknown operation {op!r}", errno.EOPNOTSUPP)


def _spawn(body: dict[str, Any], args: list[str], stdio: list[int], terminal: bool) -> int:
    """Fork and exec one process; an exec failure comes back as an OSError here."""
    env = {}
    for item in body.get("env") or []:
        name, _, value = str(item).partition("=")
        env[name] = value
    cwd = str(body.get("cwd") or "/")
    uid, gid, groups = _resolve_user(str(body.get("user") or ""))
    errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe-ish os calls until exec
        try:
            os.setsid()
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            if terminal:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            if gid is not None:
                os.setgroups(groups)
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
            os.chdir(cwd)
            os.execvpe(args[0], args, env)
        except OSError as err:
            os.write(errors_write, f"{err.errno}:{err.strerror}".encode())
        except BaseException as err:
            os.write(errors_write, f"0:{err}".encode())
        os._exit(127)
    os.close(errors_write)
    with os.fdopen(errors_read, "rb") as errors_pipe:
        failure = errors_pipe.read()
    if failure:
        os.waitpid(pid, 0)
        code, _, message = failure.decode(errors="replace").partition(":")
        raise RequestError(f"cannot start {args[0]!r} in {cwd!r}: {message}", int(code or 0))
    return pid


def _resolve_user(user: str) -> tuple[int | None, int | None, list[int]]:
    """The host's rule (users.py): the same ``user`` means the same identity everywhere."""
    try:
        identity = users.resolve_user(user)
    except users.UserSyntaxError as err:
        raise RequestError(str(err), errno.EINVAL) from None
    except users.UnknownUserError as err:
        raise RequestError(f"{err.args[0]} in the guest", errno.ENOENT) from None
    if identity is None:
        return None, None, []
    return identity


# -- slow requests: run on worker threads --------------------------------------


def _run(argv: list[str], env: dict[str, str] | None = None, data: str | None = None) -> None:
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, env=env, input=data)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise RequestError(f"{' '.join(argv)}: {message}", errno.EIO)


def _ensure_dir(path: str) -> None:
    if not path.startswith("/"):
        raise RequestError(f"guest path {path!r} is not absolute", errno.EINVAL)
    os.makedirs(path, exist_ok=True)


def op_mount(body: dict[str, Any]) -> dict[str, Any]:
    target = str(body["target"])
    _ensure_dir(target)
    argv = ["mount", "-t", str(body["fstype"])]
    if body.get("options"):
        argv += ["-o", ",".join(body["options"])]
    _run([*argv, str(body.get("source") or "none"), target])
    return {}


def op_unmount(body: dict[str, Any]) -> dict[str, Any]:
    target = str(body["target"])
    if not os.path.ismount(target):
        return {"unmounted": False}
    _run(["umount", target])
    if body.get("remove_dir"):
        try:  # noqa: SIM105 - see the imports
            os.rmdir(target)
        except OSError:
            pass
    return {"unmounted": True}


def op_mount_plan9(body: dict[str, Any]) -> dict[str, Any]:
    target = str(body["target"])
    _ensure_dir(target)
    options = ["trans=virtio", "version=9p2000.L", "msize=262144", "cache=" + str(body["cache"])]
    if body.get("read_only"):
        options.append("ro")
    deadline = time.monotonic() + float(body.get("timeout", 30))
    while True:  # the hot-plugged device's tag appears once its driver has probed it
        try:
            _run(["mount", "-t", "9p", "-o", ",".join(options), str(body["tag"]), target])
            return {}
        except RequestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _scsi_device(body: dict[str, Any]) -> str:
    """The sysfs directory of the disk at (target, lun) on the virtio-scsi controller."""
    for host in os.listdir("/sys/class/scsi_host"):
        try:
            with open(f"/sys/class/scsi_host/{host}/proc_name") as proc_name:
                if proc_name.read().strip() != "virtio_scsi":
                    continue
        except OSError:
            continue
        number = host.removeprefix("host")
        return f"/sys/bus/scsi/devices/{number}:0:{int(body['target'])}:{int(body['lun'])}"
    return ""


_groups_loaded: set[str] = set()
_MODULES_DIR = "/.hcsoci/modules"


def load_device_modules(group: str = "order") -> None:
    """Insert a group of the device modules the initramfs left for later, once, in order."""
    import threading

    with _load_lock(threading):
        if group in _groups_loaded:
            return
        with open(f"{_MODULES_DIR}/{group}") as order:
            names = order.read().split()
        for name in names:
            module = name.removesuffix(".ko")
            if os.path.exists(f"/sys/module/{module.replace('-', '_')}"):
                continue
            try:
                _run(["/.hcsoci/busybox", "insmod", f"{_MODULES_DIR}/{name}"])
            except RequestError as err:
                if "exists" not in str(err):
                    raise
        _groups_loaded.add(group)


_locks: dict[str, Any] = {}


def _load_lock(threading: Any) -> Any:
    # Created on first use, like the threading module itself (see the imports).
    return _locks.setdefault("modules", threading.Lock())


def op_mount_scsi(body: dict[str, Any]) -> dict[str, Any]:
    load_device_modules()
    deadline = time.monotonic() + float(body.get("timeout", 30))
    block_dir = ""
    while True:  # hot-plug is asynchronous: wait for the disk's block device
        device = _scsi_device(body)
        if device and os.path.isdir(device + "/block"):
            names = os.listdir(device + "/block")
            if names and os.path.exists("/dev/" + names[0]):
                block_dir = names[0]
                break
        if time.monotonic() > deadline:
            raise RequestError(
                f"SCSI disk at target {body['target']} lun {body['lun']} did not appear",
                errno.ENODEV,
            )
        time.sleep(0.05)
    target = str(body["target_path"])
    _ensure_dir(target)
    options = ["ro"] if body.get("read_only") else []
    options += [str(o) for o in body.get("options") or []]
    argv = ["mount", "-t", str(body.get("fstype") or "ext4")]
    if options:
        argv += ["-o", ",".join(options)]
    _run([*argv, "/dev/" + block_dir, target])
    return {"device": "/dev/" + block_dir}


def _pmem_block_device(slot: int) -> str:
    """The ``pmemN`` of the virtio-pmem device in PCI slot ``slot``; '' until it appears."""
    here = f"/sys/bus/pci/devices/0000:00:{slot:02x}.0"
    for prefix in ("virtio", "ndbus", "region", "namespace", "block"):
        try:
            names = sorted(n for n in os.listdir(here) if n.startswith(prefix))
        except OSError:
            return ""
        if not names:
            return ""
        here = f"{here}/{names[0]}"
    names = [n for n in os.listdir(here) if n.startswith("pmem")]
    return names[0] if names else ""


def op_mount_pmem(body: dict[str, Any]) -> dict[str, Any]:
    """Mount the ext4 image on a hot-plugged virtio-pmem device read-only, with DAX if it can."""
    load_device_modules()
    load_device_modules("order-pmem")
    slot = int(body["slot"])
    deadline = time.monotonic() + float(body.get("timeout", 30))
    name = ""
    while not name:  # hot-plug is asynchronous: wait for the namespace's block device
        name = _pmem_block_device(slot)
        if not name and time.monotonic() > deadline:
            raise RequestError(f"no pmem block device in PCI slot {slot}", errno.ENODEV)
        if not name:
            time.sleep(0.02)
    device = "/dev/" + name
    if not os.path.exists(device):
        with open(f"/sys/block/{name}/dev") as numbers:
            major, minor = (int(n) for n in numbers.read().split(":"))
        os.mknod(device, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    target = str(body["target_path"])
    _ensure_dir(target)
    try:  # the page cache is skipped when the file system can map the device (4 KiB blocks)
        _run(["mount", "-t", "ext4", "-o", "ro,noload,dax=always", device, target])
        return {"device": device, "dax": True}
    except RequestError:
        _run(["mount", "-t", "ext4", "-o", "ro,noload", device, target])
        return {"device": device, "dax": False}


def op_remove_scsi_device(body: dict[str, Any]) -> dict[str, Any]:
    if not os.path.isdir("/sys/class/scsi_host"):
        return {"removed": False}
    device = _scsi_device(body)
    if device and os.path.exists(device + "/delete"):
        with open(device + "/delete", "w") as delete:
            delete.write("1")
        return {"removed": True}
    return {"removed": False}


def op_mount_overlay(body: dict[str, Any]) -> dict[str, Any]:
    target = str(body["target"])
    _ensure_dir(target)
    lowers = [str(p) for p in body["lowers"]]
    options = ["lowerdir=" + ":".join(lowers)]
    if body.get("upper"):
        _ensure_dir(str(body["upper"]))
        _ensure_dir(str(body["work"]))
        options += ["upperdir=" + str(body["upper"]), "workdir=" + str(body["work"])]
    _run(["mount", "-t", "overlay", "-o", ",".join(options), "overlay", target])
    return {}


def op_create_netns(body: dict[str, Any]) -> dict[str, Any]:
    _run(["ip", "netns", "add", str(body["name"])])
    _run(["ip", "-n", str(body["name"]), "link", "set", "lo", "up"])
    return {}


def op_delete_netns(body: dict[str, Any]) -> dict[str, Any]:
    if os.path.exists(f"/run/netns/{body['name']}"):
        _run(["ip", "netns", "delete", str(body["name"])])
    return {}


def _interface_with_mac(mac: str) -> str:
    for name in os.listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{name}/address") as address:
                if address.read().strip().lower() == mac.lower():
                    return name
        except OSError:
            continue
    return ""


def op_add_nic(body: dict[str, Any]) -> dict[str, Any]:
    load_device_modules()
    namespace, name = str(body["namespace"]), str(body["name"])
    deadline = time.monotonic() + float(body.get("timeout", 30))
    while not (interface := _interface_with_mac(str(body["mac"]))):
        if time.monotonic() > deadline:
            raise RequestError(f"no NIC with MAC {body['mac']} appeared", errno.ENODEV)
        time.sleep(0.05)
    # A unique name first: the kernel's name (eth0...) may be taken in the namespace.
    moving = "hcn" + str(body["mac"]).replace(":", "")[-8:]
    _run(["ip", "link", "set", "dev", interface, "name", moving])
    _run(["ip", "link", "set", "dev", moving, "netns", namespace])
    _run(["ip", "-n", namespace, "link", "set", "dev", moving, "name", name])
    _run(["ip", "-n", namespace, "addr", "add", str(body["address"]), "dev", name])
    _run(["ip", "-n", namespace, "link", "set", "dev", name, "up"])
    if body.get("gateway"):
        _run(["ip", "-n", namespace, "route", "add", "default", "via", str(body["gateway"])])
    return {"interface": name}


def op_shutdown(body: dict[str, Any]) -> dict[str, Any]:
    os.sync()
    import threading

    threading.Timer(0.1, lambda: _run(["/.hcsoci/busybox", "poweroff", "-f"])).start()
    return {}


def find_port(name: str, timeout: float = 30.0) -> str:
    """The /dev node of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for port in os.listdir(_PORT_CLASS):
                try:
                    with open(f"{_PORT_CLASS}/{port}/name") as port_name:
                        if port_name.read().strip() == name:
                            return "/dev/" + port
                except OSError:
                    continue
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"hcsoci-gcs: no virtio-serial port named {name!r}")
        time.sleep(0.02)


def _list_imported_files() -> None:
    """Print every file this agent's imports loaded (the asset builder seeds them)."""
    # Imported lazily at run time; seed them too.
    import pwd  # noqa: F401
    import subprocess  # noqa: F401
    import threading  # noqa: F401

    for module in list(sys.modules.values()):
        for attribute in ("__file__", "__cached__"):
            path = getattr(module, attribute, None)
            if isinstance(path, str) and os.path.isfile(path):
                print(os.path.abspath(path))


def main() -> None:
    """Entry point inside the guest."""
    if sys.argv[1:] == ["--list-imported-files"]:
        _list_imported_files()
        return
    agent = Agent(find_port(protocol.PORT_NAME))
    agent.serve()


if __name__ == "__main__":
    main()
