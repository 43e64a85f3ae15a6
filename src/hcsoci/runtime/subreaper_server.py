"""The subreaper process: runs ``runc ... --detach`` and reaps what it leaves behind.

Run by :mod:`hcsoci.runtime.subreaper` as ``python -I -S subreaper_server.py FD``
(standard library only, so it starts fast), one per client process, which
talks to it over the ``SOCK_SEQPACKET`` socket ``FD``.  It marks itself a child
subreaper (``PR_SET_CHILD_SUBREAPER``), so a container process that a detached
runtime leaves behind becomes its child when the runtime exits, and its exit
status can be read with ``waitpid`` as a child's can, though the process was
given the caller's descriptors as its own stdio and no runtime waits for it.

Requests (JSON, with three descriptors for the process's stdin, stdout and
stderr): ``{"launch": TOKEN, "argv": [...], "pid_file": PATH}``.  Replies, one
JSON object each: ``{"token": T, "failed": CODE}`` when the runtime exited
non-zero (its log says why); ``{"token": T, "started": PID}`` with a pidfd of
the process once the runtime exited 0 and wrote the pid file; ``{"token": T,
"exited": CODE}`` once the process was reaped (``128 + N`` for a signal N).

The loop is single-threaded and only it reaps, so a process whose pid the pid
file names cannot be reaped, and its pid reused, between reading the file and
opening the pidfd.  It ends when the client's end of the socket closes; the
processes it still waits for are then reparented to init and keep running.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import signal
import socket
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_UNKNOWN_KEPT_S = 60.0
"""How long the status of a reaped pid nobody asked for yet is kept."""


class _Launch:
    def __init__(self, token: str, pid_file: str) -> None:
        self.token = token
        self.pid_file = pid_file
        self.spawned = time.monotonic()


class Server:
    """The request loop over one client socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.runtimes: dict[int, _Launch] = {}  # runtime pid -> its launch
        self.processes: dict[int, str] = {}  # container process pid -> token
        self.unclaimed: dict[int, tuple[int, float]] = {}  # reaped pid -> (code, when)

    def send(self, message: dict[str, object], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; the loop sees it next

    def launch(self, request: dict[str, object], fds: list[int]) -> None:
        token = str(request.get("launch", ""))
        argv = request.get("argv")
        pid_file = request.get("pid_file")
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(arg, str) for arg in argv)
            or not isinstance(pid_file, str)
            or len(fds) != 3
        ):
            self.send({"token": token, "failed": 125, "error": "malformed launch request"})
            return
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                os.environ,
                file_actions=actions,
                setpgroup=0,
                setsigdef=(signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT),
            )
        except OSError as err:
            self.send({"token": token, "failed": 127, "error": f"{argv[0]}: {err.strerror}"})
            return
        self.runtimes[pid] = _Launch(token, pid_file)

    def reap(self) -> None:
        batch: dict[int, int] = {}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            batch[pid] = code if code >= 0 else 128 - code
        now = time.monotonic()
        runtimes = {pid: batch.pop(pid) for pid in list(batch) if pid in self.runtimes}
        for pid, code in batch.items():
            token = self.processes.pop(pid, None)
            if token is None:  # perhaps the process of a runtime in this batch
                self.unclaimed[pid] = (code, now)
            else:
                self.send({"token": token, "exited": code})
        for pid, code in runtimes.items():
            self.runtime_exited(self.runtimes.pop(pid), code)
        for pid, (_, when) in list(self.unclaimed.items()):
            if now - when > _UNKNOWN_KEPT_S:
                del self.unclaimed[pid]

    def runtime_exited(self, launch: _Launch, code: int) -> None:
        if code != 0:
            self.send({"token": launch.token, "failed": code})
            return
        try:
            with open(launch.pid_file, "rb") as file:
                pid = int(file.read().strip() or b"0")
        except (OSError, ValueError):
            pid = 0
        if pid <= 0:
            self.send({"token": launch.token, "failed": 125, "error": "no pid file written"})
            return
        reaped = self.unclaimed.pop(pid, None)
        if reaped is not None and reaped[1] >= launch.spawned:
            self.send({"token": launch.token, "started": pid})
            self.send({"token": launch.token, "exited": reaped[0]})
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.send({"token": launch.token, "failed": 125, "error": f"pid {pid} is gone"})
            return
        self.processes[pid] = launch.token
        try:
            self.send({"token": launch.token, "started": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def serve(self) -> None:
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(wake_read, select.POLLIN)
        self.reap()  # anything that ended before the handler was set
        while True:
            for fd, _ in poller.poll():
                if fd == wake_read:
                    while True:
                        try:
                            os.read(wake_read, 512)
                        except BlockingIOError:
                            break
                    self.reap()
                    continue
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 3)
                except ConnectionResetError:
                    return
                if not data:
                    for fd_ in fds:
                        os.close(fd_)
                    return
                try:
                    request = json.loads(data)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                    self.launch(request, fds)
                except ValueError:
                    self.send({"token": "", "failed": 125, "error": "malformed request"})
                finally:
                    for fd_ in fds:
                        os.close(fd_)


def main() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    sock = socket.socket(fileno=int(sys.argv[1]))
    Server(sock).serve()


if __name__ == "__main__":
    main()
