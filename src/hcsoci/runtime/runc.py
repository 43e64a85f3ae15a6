"""Drive an OCI runtime (``runc``, or the compatible ``crun``) through its command line.

One :class:`Runtime` is one binary plus one state directory (``--root``) under
the hcsoci state root, so hcsoci's containers never mix with containers other
tools made with the same runtime.  Long-lived operations (``run``, ``exec``)
are *spawned* and handed back as :class:`subprocess.Popen` objects: the caller
keeps the runtime in the foreground as the parent of the container process (see
:mod:`hcsoci.container` for why).  Short operations (``kill``, ``delete``,
``state``, ``ps``, ``list``) run to completion here.

Each spawned operation gets its own ``--log`` file in JSON form, so the
runtime's own error ("executable file not found", "no such file or directory")
can be told apart from the container process's output on the same stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import os
import select
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError
from hcsoci.gcs.runclog import logged_exit_status
from hcsoci.paths import make_private_dir
from hcsoci.store import state_root

__all__ = [
    "DEFAULT_RUNTIME",
    "OCIRuntimeError",
    "Runtime",
    "RuntimeState",
    "read_exit_status",
    "read_runtime_log",
    "runtime_name",
    "wait_for_pid_file",
]

log = logging.getLogger(__name__)

DEFAULT_RUNTIME = "runc"
SUPPORTED_RUNTIMES = ("runc", "crun")


class OCIRuntimeError(HcsociError):
    """The OCI runtime refused an operation; the message is the runtime's own."""


@dataclass(frozen=True)
class RuntimeState:
    """What ``runc state`` reports about one container."""

    id: str
    status: str
    """``creating``, ``created``, ``running``, ``paused`` or ``stopped``."""
    pid: int
    bundle: str


def runtime_name(name: str = "") -> str:
    """The runtime to use: ``name``, else ``$HCSOCI_RUNTIME``, else ``runc``."""
    chosen = name or os.environ.get("HCSOCI_RUNTIME") or DEFAULT_RUNTIME
    if chosen not in SUPPORTED_RUNTIMES:
        raise InvalidArgumentError(
            f"runtime: {chosen!r} is not supported (use one of {', '.join(SUPPORTED_RUNTIMES)})"
        )
    return chosen


@functools.cache
def _find_binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise NotFoundError(f"runtime: {name!r} is not installed (not found in PATH)")
    return binary


class Runtime:
    """One OCI runtime binary with hcsoci's private state directory."""

    def __init__(self, name: str = "", root: Path | str | None = None) -> None:
        self.name = runtime_name(name)
        self.binary = _find_binary(self.name)
        self.root = Path(root) if root is not None else state_root() / self.name
        if not self.root.is_dir():
            make_private_dir(self.root)

    def __repr__(self) -> str:
        return f"<Runtime {self.name} root={self.root}>"

    def _command(self, *args: str, log_file: Path | None = None, debug: bool = False) -> list[str]:
        command = [self.binary, "--root", str(self.root)]
        if log_file is not None:
            command += ["--log", str(log_file), "--log-format", "json"]
        if debug and self.name == "runc":
            command.append("--debug")
        return [*command, *args]

    # --- long-lived operations: the runtime stays the parent of the process ---

    def spawn_run(
        self,
        container_id: str,
        bundle: Path,
        *,
        pid_file: Path,
        log_file: Path,
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> subprocess.Popen[bytes]:
        """Start ``runtime run`` (create + start, foreground) for ``bundle``'s config.json."""
        command = self._command(
            "run", "--bundle", str(bundle), "--pid-file", str(pid_file), "--", container_id,
            log_file=log_file,
        )  # fmt: skip
        return self._spawn(command, bundle, stdin, stdout, stderr)

    def spawn_exec(
        self,
        container_id: str,
        process_file: Path,
        *,
        pid_file: Path,
        log_file: Path,
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> subprocess.Popen[bytes]:
        """Start ``runtime exec --process FILE`` (foreground) in a running container.

        runc runs with ``--debug``, so that its log says the process's exit
        status as soon as runc reaped it (:func:`read_exit_status`): runc itself
        exits only once the process's stdout and stderr reached end of file,
        which a background child of the process can put off indefinitely.
        """
        command = self._command(
            "exec", "--process", str(process_file), "--pid-file", str(pid_file), "--", container_id,
            log_file=log_file, debug=True,
        )  # fmt: skip
        return self._spawn(command, process_file.parent, stdin, stdout, stderr)

    def detached_run_command(
        self, container_id: str, bundle: Path, *, pid_file: Path, log_file: Path
    ) -> list[str]:
        """``runtime run --detach``: the init gets the runtime's own stdio, no copy."""
        return self._command(
            "run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file),
            "--", container_id, log_file=log_file,
        )  # fmt: skip

    def detached_exec_command(
        self, container_id: str, process_file: Path, *, pid_file: Path, log_file: Path
    ) -> list[str]:
        """``runtime exec --detach``: the process gets the runtime's own stdio, no copy."""
        return self._command(
            "exec", "--detach", "--process", str(process_file), "--pid-file", str(pid_file),
            "--", container_id, log_file=log_file,
        )  # fmt: skip

    def _spawn(
        self, command: list[str], cwd: Path, stdin: int, stdout: int, stderr: int
    ) -> subprocess.Popen[bytes]:
        log.debug("spawn %s", command)
        # A process group of its own (no session: start_new_session measured at 1.33x
        # the time of a `runc run` of `true` here; a group costs nothing measurable).
        # So a signal to the caller's group (a terminal's ^C) does not reach runc,
        # which would forward it into the container behind the caller's back: the
        # caller decides what the container gets (see hcsoci.container).
        return subprocess.Popen(
            command, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, process_group=0
        )

    # --- short operations ---

    def _call(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = self._command(*args)
        log.debug("call %s", command)
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)

    def _check(self, what: str, result: subprocess.CompletedProcess[bytes]) -> bytes:
        if result.returncode != 0:
            message = _runtime_message(result.stderr)
            if "does not exist" in message or "not found" in message:
                raise NotFoundError(f"{self.name} {what}: {message}")
            raise OCIRuntimeError(f"{self.name} {what}: {message}")
        return result.stdout

    def exists(self, container_id: str) -> bool:
        """Whether the runtime holds state for ``container_id`` (no subprocess)."""
        return (self.root / container_id).is_dir()

    def state(self, container_id: str) -> RuntimeState | None:
        """``runtime state ID``; None when the runtime does not know the container."""
        if not self.exists(container_id):
            return None
        result = self._call("state", "--", container_id)
        if result.returncode != 0 and not self.exists(container_id):
            return None  # it went away while we asked
        return _parse_state(json.loads(self._check(f"state {container_id}", result)))

    def list_containers(self) -> list[RuntimeState]:
        """Every container the runtime holds under this root."""
        output = self._check("list", self._call("list", "--format", "json"))
        return [_parse_state(item) for item in json.loads(output or b"null") or []]

    def ps(self, container_id: str) -> list[int]:
        """Host pids of the processes in the container."""
        output = self._check(
            f"ps {container_id}", self._call("ps", "--format", "json", "--", container_id)
        )
        return [int(pid) for pid in json.loads(output or b"null") or []]

    def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        """Send ``sig`` to the container's init (or to all its processes)."""
        args = ["kill", *(["--all"] if all_processes else []), "--", container_id, str(sig)]
        self._check(f"kill {container_id}", self._call(*args))

    def delete(self, container_id: str, force: bool = False) -> None:
        """Delete the container's runtime state; ``force`` kills it first.  Gone is fine."""
        if not self.exists(container_id):
            return
        result = self._call("delete", *(["--force"] if force else []), "--", container_id)
        if result.returncode != 0 and self.exists(container_id):
            self._check(f"delete {container_id}", result)


def _parse_state(item: dict[str, object]) -> RuntimeState:
    pid = item.get("pid", 0)
    return RuntimeState(
        id=str(item.get("id", "")),
        status=str(item.get("status", "")),
        pid=pid if isinstance(pid, int) else 0,
        bundle=str(item.get("bundle", "")),
    )


def _runtime_message(stderr: bytes) -> str:
    """The runtime's error text: runc prints ``time=... level=error msg="..."`` lines."""
    text = stderr.decode(errors="replace").strip()
    messages = []
    for line in text.splitlines():
        if 'msg="' in line:
            messages.append(line.split('msg="', 1)[1].rsplit('"', 1)[0])
        elif line.strip():
            messages.append(line.strip())
    return "; ".join(dict.fromkeys(messages)) or "failed with no message"


def read_runtime_log(log_file: Path) -> str:
    """The error messages a spawned runtime wrote to its JSON ``--log`` file ('' if none)."""
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    messages = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "fatal"):
            messages.append(str(record.get("msg", "")))
    return "; ".join(dict.fromkeys(m for m in messages if m))


def read_exit_status(log_file: Path, pid: int) -> int | None:
    """The exit status a runtime with ``--debug`` logged for ``pid`` once it reaped it, or None.

    See :mod:`hcsoci.gcs.runclog` (the guest agent reads runc's log the same way);
    None too for a runtime that logs no such record.
    """
    return logged_exit_status(str(log_file), pid)


_IN_CLOEXEC = os.O_CLOEXEC
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class _DirectoryWatcher:
    """One inotify instance for the whole process, watching pid-file directories.

    Why one, never closed: closing an inotify fd waits for an SRCU grace period
    (measured 9-12 ms here), which would sit on every container start and exec.
    Adding and removing a watch costs microseconds.  Several threads may wait at
    once: whoever wakes drains the events and bumps ``generation``; the others
    re-check their own file, and a short poll timeout covers a wakeup that
    another thread consumed between a waiter's check and its poll.
    """

    _RECHECK_MS = 50

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._owner_pid = 0
        self._watches: dict[bytes, tuple[int, int]] = {}  # directory -> (wd, users)

    def _instance(self) -> int:
        if self._fd < 0 or self._owner_pid != os.getpid():  # a forked child needs its own
            fd = _libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            self._fd, self._owner_pid, self._watches = fd, os.getpid(), {}
        return self._fd

    def add(self, directory: Path) -> int:
        key = os.fsencode(directory)
        with self._lock:
            fd = self._instance()
            wd, users = self._watches.get(key, (-1, 0))
            if wd < 0:
                # runc writes a temporary file and renames it (IN_MOVED_TO); crun writes in place.
                wd = _libc.inotify_add_watch(fd, key, _IN_MOVED_TO | _IN_CLOSE_WRITE)
                if wd < 0:
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._watches[key] = (wd, users + 1)
            return fd

    def remove(self, directory: Path) -> None:
        key = os.fsencode(directory)
        with self._lock:
            wd, users = self._watches.get(key, (-1, 0))
            if users > 1:
                self._watches[key] = (wd, users - 1)
                return
            self._watches.pop(key, None)
            if wd >= 0 and self._owner_pid == os.getpid():
                _libc.inotify_rm_watch(self._fd, wd)

    def drain(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 65536):
                pass


_WATCHER = _DirectoryWatcher()


def wait_for_pid_file(pid_file: Path, runtime: subprocess.Popen[bytes]) -> int:
    """Block until the runtime wrote ``pid_file``; its pid, or 0 if the runtime exited first.

    Sleeps in ``poll(2)`` on an inotify watch of the directory and a pidfd of the
    runtime, instead of polling the file on a timer: a 1 ms polling loop cost 15%
    of a `true` container's run time on a loaded 2-core machine.
    """
    watch = _WATCHER.add(pid_file.parent)
    runtime_fd = -1
    try:
        runtime_fd = os.pidfd_open(runtime.pid)
        poller = select.poll()
        poller.register(watch, select.POLLIN)
        poller.register(runtime_fd, select.POLLIN)
        while True:
            pid = _read_pid_file(pid_file)  # checked after the watch exists: no lost event
            if pid:
                return pid
            events = poller.poll(_DirectoryWatcher._RECHECK_MS)
            if any(fd == runtime_fd for fd, _ in events):
                return _read_pid_file(pid_file)  # written just before it exited, or never
            if events:
                _WATCHER.drain(watch)
    finally:
        if runtime_fd >= 0:
            os.close(runtime_fd)
        _WATCHER.remove(pid_file.parent)


def _read_pid_file(path: Path) -> int:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return 0
    return int(text) if text.strip() else 0
