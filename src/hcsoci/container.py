"""A process-isolated container over an OCI runtime (``runc``): the ``cow.Container`` protocol.

Process reaping: the runtime stays in the foreground
====================================================

Every process hcsoci runs in a container -- the init (``runc run``) and each
extra process (``runc exec``) -- has the runtime as *our child*, in the
foreground: runc forwards signals, relays a terminal, waits for the container
process and exits with its status (``128 + N`` for a signal N, as we report).
The alternative, detaching (``runc create`` + ``runc start`` / ``exec -d``)
and reaping the orphaned container processes ourselves as a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``) through pidfds, was measured on this
machine before writing this module: create + start + wait + delete of a
``true`` container cost 1.11x a single foreground ``runc run`` (medians of 30,
interleaved) -- three runtime invocations instead of one -- which leaves no room
for hcsoci's own work under the 1.15x target; and a subreaper would make every
orphan of every child of the controller ours to reap.  So ``create_container``
prepares the bundle and the runtime container is born at ``start`` with
``runc run``; an exec is one ``runc exec``.

The exception: handed-over descriptors.  A runtime in the foreground copies
its process's stdio through pipes of its own (runc's ``setupProcessPipes``),
so a caller's file or ``/dev/null`` offered as stdout (``stdio_fds``) would
still be copied, by runc.  Only a detached runtime hands its own stdio down.
So a process given a caller's descriptor runs with ``runc exec --detach`` (or
``run --detach`` for the init) as :class:`DetachedProcess`, and the one
subreaper process of :mod:`hcsoci.runtime.subreaper` -- not the caller's own
process -- reaps it and reports its exit code.  Its init's runtime state
outlives it until the container is released (``runc delete``).

To signal a process we go around runc, straight to the container process: runc
writes its host pid to a ``--pid-file`` once it runs, and we hold a pidfd for
it (opened while runc, its parent, still lives, so the pid cannot have been
recycled).  ``create_process`` and ``start`` return once that pid file exists,
so a runtime failure ("executable file not found") is raised there, read from
the runtime's own JSON log rather than guessed from the process's stderr.

Signals and descriptors: the runtime runs in a process group of its own, so
that a signal to the caller's group (a terminal's ^C, a shell's SIGHUP, a
``kill -- -PGID``) does not reach the container behind the caller's back and
twice over once the caller forwards it (as the ``hcsoci`` command does).  A
caller's descriptor offered for the process's stdio (``stdio_fds``, see
:mod:`hcsoci.cow`) goes to the runtime as it is and on to the container
process, unless it is a terminal: a process outside the terminal's foreground
group would be stopped by reading it or changing its modes.

An exec's exit: ``runc exec`` in the foreground waits, after its process
exited, until the process's stdout and stderr reach end of file, which a
background child of the process can put off indefinitely.  So runc runs exec
with ``--debug``, whose log records the exit status the moment runc reaps the
process; ``ContainerProcess.wait()`` returns then, and ``close()`` kills a
runc that only waits for output nobody will read any more.  The ends of the
process's stdio we keep are :class:`hcsoci.pipes.PipeEnd` objects, so
``close()`` also cuts a relay blocked on them (``copy_after_exit_timeout``).

Terminals: runc in the foreground relays the container's pty to its own stdio,
so we give it the slave side of a pty of ours and keep the master; a resize
sets the master's window size and the container process's own terminal (see
:mod:`hcsoci.gcs.terminal`: runc's copy on ``SIGWINCH`` alone races with the
keys typed next), and sends runc ``SIGWINCH``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import tty
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import msgspec

from hcsoci import container_table, oci, relay
from hcsoci.context import Context
from hcsoci.cow import NO_FDS, Stdio, StdioFds
from hcsoci.errors import (
    HcsociError,
    InvalidArgumentError,
    NotExecutableError,
    NotFoundError,
    StateError,
)
from hcsoci.gcs.terminal import resize_held_terminal, set_window_size
from hcsoci.lifecycle import ContainerLifecycle, Pipes
from hcsoci.paths import check_id, write_private_file
from hcsoci.pipes import PipeEnd
from hcsoci.properties import ContainerProperties
from hcsoci.runtime import OCIRuntimeError, Runtime
from hcsoci.runtime.runc import read_exit_status, read_runtime_log, wait_for_pid_file
from hcsoci.runtime.subreaper import Launched, LaunchFailed, Subreaper, default_subreaper
from hcsoci.store import Store, open_store

if TYPE_CHECKING:
    from hcsoci.uvm.remote import RemoteContainer

__all__ = [
    "Container",
    "ContainerProcess",
    "ContainerProperties",
    "DetachedProcess",
    "open_container",
]

log = logging.getLogger(__name__)

_LOG_POLL_MS = 10
"""How often an exited exec's runtime log is read for its status until runc writes it."""

_VEOF = b"\x04"  # what "closing stdin" means for a terminal: the line discipline's EOF


class _ProcessStdio:
    """The fds handed to the runtime and the file objects we keep.

    An offered descriptor (``fds``) for stdin or stdout is given to the
    runtime as it is, which passes it on to the container process (``runc``
    without a terminal hands its own stdio down).  Declined, so relayed: a
    terminal, because the runtime runs in a process group of its own where a
    terminal would stop it (SIGTTIN/SIGTTOU); and stderr, because the runtime
    writes its own failure to start there ("runc run failed: ...") -- through a
    pipe it is never shown, the relay starting only once the process runs, and
    the failure is raised once, read from the runtime's log.

    The ends we keep are :class:`hcsoci.pipes.PipeEnd` objects, so that
    ``ContainerProcess.close()`` cuts a relay blocked on them from any thread
    (a grandchild holding the process's stdout open would otherwise keep it
    waiting); a terminal's master reads ``EIO`` as end of file.
    """

    def __init__(
        self,
        pipes: tuple[bool, bool, bool],
        terminal: bool,
        size: oci.Box | None,
        fds: StdioFds = NO_FDS,
    ):
        self.child_fds: list[int] = []
        self.handed_over = False  # a caller's descriptor is among child_fds
        self.files: list[IO[bytes] | None] = [None, None, None]
        self.master: int | None = None
        self._to_close: list[int] = []
        try:
            if terminal:
                self._open_terminal(pipes, size)
            else:
                self._open_pipes(pipes, fds)
        except BaseException:
            self.close_child_ends()
            self.close()
            raise

    def _open_terminal(self, pipes: tuple[bool, bool, bool], size: oci.Box | None) -> None:
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        self.master = master
        self._to_close.append(slave)
        # Raw from the start: runc makes its stdio raw too, but only once it runs,
        # and output the container writes before that got a second \r per line.
        tty.setraw(slave)
        if size is not None and size.height and size.width:
            set_window_size(slave, size.width, size.height)
        self.child_fds = [slave, slave, slave]
        # stdin and stdout are both the master; stdout is always kept so the output is
        # drained (an unread terminal would stop the process).  The master itself
        # stays ours, for resizing, until close().
        self.files[1] = _end(os.dup(master), writable=False, name="stdout", eio_is_eof=True)
        if pipes[0]:
            self.files[0] = _end(os.dup(master), writable=True, name="stdin")

    def _open_pipes(self, pipes: tuple[bool, bool, bool], fds: StdioFds) -> None:
        null = -1
        for index, wanted in enumerate(pipes):
            given = fds[index] if index < 2 else None
            if given is not None and not os.isatty(given):
                copy = relay.take_descriptor(given, f"stdio_fds[{index}]")
                self.handed_over = True
                self.child_fds.append(copy)
                self._to_close.append(copy)
                continue
            if not wanted:
                if null < 0:
                    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    self._to_close.append(null)
                self.child_fds.append(null)
                continue
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            name = ("stdin", "stdout", "stderr")[index]
            if index == 0:
                self.child_fds.append(read_end)
                self._to_close.append(read_end)
                self.files[0] = _end(write_end, writable=True, name=name)
            else:
                self.child_fds.append(write_end)
                self._to_close.append(write_end)
                self.files[index] = _end(read_end, writable=False, name=name)

    def close_child_ends(self) -> None:
        """Close our copies of what the runtime got (after spawning it)."""
        for fd in self._to_close:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to_close = []

    def close(self) -> None:
        """Close the ends we keep, cutting any relay blocked on them."""
        for index, file in enumerate(self.files):
            if file is not None:
                with contextlib.suppress(OSError):
                    file.close()
                self.files[index] = None
        if self.master is not None:
            os.close(self.master)
            self.master = None


def _end(fd: int, **options: Any) -> IO[bytes]:
    """``fd`` as a :class:`PipeEnd` (closed again if that fails)."""
    try:
        return cast("IO[bytes]", PipeEnd(fd, **options))
    except BaseException:
        os.close(fd)
        raise


class _RuntimeProcess:
    """A container process, whichever way its runtime ran: its pid, pidfd and stdio.

    Subclasses say whether it is known reaped (:meth:`_gone`) and what its
    exit code is (:meth:`runtime_status`).
    """

    def __init__(
        self, container: Container, stdio: _ProcessStdio, scratch_files: list[Path], is_init: bool
    ) -> None:
        self._container = container
        self._stdio = stdio
        self._scratch_files = scratch_files
        self._is_init = is_init
        self._pid = 0
        self._pidfd: int | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        kind = "init" if self._is_init else "exec"
        return f"<{type(self).__name__} {self._container.id()} {kind} pid={self._pid}>"

    def pid(self) -> int:
        """The container process's host pid."""
        return self._pid

    def stdio(self) -> Stdio:
        """(stdin, stdout, stderr): None where nothing is relayed (a handed-over
        descriptor, a stream not asked for); a terminal's master as stdin and stdout."""
        files = self._stdio.files
        return files[0], files[1], files[2]

    def close_stdin(self, ctx: Context) -> None:
        """Close stdin (for a terminal: send the EOF character)."""
        file = self._stdio.files[0]
        if file is None:
            return
        if self._stdio.master is not None:
            with contextlib.suppress(OSError):
                file.write(_VEOF)
        with contextlib.suppress(OSError):
            file.close()
        self._stdio.files[0] = None

    def kill(self, ctx: Context) -> bool:
        """SIGKILL the container process; False when it was already gone."""
        return self.signal(ctx, signal.SIGKILL)

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig`` to the container process; False when it was already gone."""
        with self._lock:
            if self._pidfd is None or self._gone():
                return False
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                return False
            return True

    def runtime_status(self) -> int | None:
        """The exit code (``128 + N`` for a signal N), or None while it runs."""
        raise NotImplementedError

    def _gone(self) -> bool:
        """Whether the process is known to have been reaped (its pid may be reused)."""
        raise NotImplementedError

    def _drop_pidfd(self) -> None:
        """Close the pidfd (the lock held): the pid is no longer ours to signal."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _mark_closed(self) -> bool:
        """Mark the handle closed and drop its pidfd; False when it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._drop_pidfd()
        return True

    def _exited(self) -> None:
        with self._lock:
            self._drop_pidfd()
        if self._is_init:
            self._container._init_exited(self)

    def _remove_scratch_files(self) -> None:
        for path in self._scratch_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class ContainerProcess(_RuntimeProcess):
    """A process in a container: the runtime (``run`` or ``exec``) in the foreground.

    Implements :class:`hcsoci.cow.Process`.  ``pid()`` is the container process's
    host pid.  The exit code is the runtime's, which is the process's (``128 + N``
    for a signal N).
    """

    def __init__(
        self,
        container: Container,
        popen: subprocess.Popen[bytes],
        stdio: _ProcessStdio,
        pid_file: Path,
        runtime_log: Path,
        scratch_files: list[Path],
        is_init: bool,
    ) -> None:
        super().__init__(container, stdio, scratch_files, is_init)
        self._popen = popen
        self._pid_file = pid_file
        self._runtime_log = runtime_log
        self._logged_status: int | None = None  # an exec's status, read from runc's log

    # -- startup --

    def _await_running(self, args: list[str]) -> None:
        """Block until the runtime wrote the pid file; raise its error if it exits first."""
        pid = wait_for_pid_file(self._pid_file, self._popen)
        if not pid:
            self._popen.wait()
            raise _startup_error(self._container, args, self._runtime_log, self._popen.returncode)
        self._pid = pid
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # already gone: signals report "not delivered"
        if self._popen.poll() is None:
            self._pidfd = pidfd  # the runtime, its parent, still waits for it: no pid reuse
        else:
            os.close(pidfd)

    # -- cow.Process --

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        """Set the terminal's size (raises :class:`StateError` without a terminal)."""
        if self._closed:
            raise StateError(f"{self!r} is closed")
        if self._stdio.master is None:
            raise StateError(f"{self!r}: the process has no terminal to resize")
        if width <= 0 or height <= 0 or width > 0xFFFF or height > 0xFFFF:
            raise InvalidArgumentError(f"console size: {width}x{height} is not a valid size")
        try:
            set_window_size(self._stdio.master, width, height)
        except OSError as err:
            raise StateError(f"{self!r}: resize failed: {err.strerror}") from err
        with self._lock:
            if self._pidfd is not None and self._popen.returncode is None:
                resize_held_terminal(self._pidfd, self._pid, width, height)
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGWINCH)  # runc copies the size inward too

    def _gone(self) -> bool:
        return self._popen.returncode is not None

    def wait(self) -> None:
        """Block until the process exited.

        For the init, until its runtime exited (the init's end ends every
        process of its pid namespace, and with them its output).  For an extra
        process, until the runtime reaped it: ``runc exec`` itself waits for
        the process's stdout and stderr to reach end of file, which a
        background child of the process can put off for as long as it lives,
        but it logs the status first (see :func:`read_exit_status`).
        """
        if not self._is_init:
            self._wait_reaped()
        if self._logged_status is None:
            self._popen.wait()
        self._exited()

    def exit_code(self) -> int:
        """The exit code; raises :class:`StateError` while the process runs."""
        if self._logged_status is not None:
            return self._logged_status
        code = self._popen.poll()
        if code is None:
            if not self._is_init and self._container_exited():
                self._logged_status = read_exit_status(self._runtime_log, self._pid)
                if self._logged_status is not None:
                    return self._logged_status
            raise StateError(f"{self!r} is still running")
        self._exited()
        return code if code >= 0 else 128 - code

    def close(self) -> None:
        """Release our handles, cutting any relay of the process's stdio.

        The process keeps running if it still does.  An extra process that has
        exited while its runtime still waits for the end of its output (a
        background child holds it open) has that runtime killed: the child
        then writes into a pipe nobody reads, as it would on this machine
        once the caller closed its end.
        """
        if not self._mark_closed():
            return
        if self._logged_status is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.kill()
            self._popen.wait()
        self._stdio.close()
        if self._popen.returncode is not None:
            self._remove_scratch_files()

    def runtime_status(self) -> int | None:
        """The runtime's exit code (the init's), or None while it runs."""
        code = self._popen.poll()
        return None if code is None else (code if code >= 0 else 128 - code)

    def _container_exited(self) -> bool:
        """Whether the container process is known to have exited (its pidfd is readable)."""
        with self._lock:
            if self._pidfd is None:
                return True
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            return bool(poller.poll(0))

    def _wait_reaped(self) -> None:
        """Block until runc reaped the container process and logged its status, or exited."""
        if self._popen.poll() is not None:
            return
        with self._lock:
            pidfd = None if self._pidfd is None else os.dup(self._pidfd)
        try:
            runtime = os.pidfd_open(self._popen.pid)  # our unreaped child: not recycled
        except ProcessLookupError:
            if pidfd is not None:
                os.close(pidfd)
            return
        try:
            poller = select.poll()
            poller.register(runtime, select.POLLIN)
            if pidfd is not None:
                poller.register(pidfd, select.POLLIN)
            gone = pidfd is None
            while True:
                if gone:
                    status = read_exit_status(self._runtime_log, self._pid)
                    if status is not None:
                        self._logged_status = status
                        return
                # Between the exit and runc's log record lie microseconds: poll briefly.
                for fd, _ in poller.poll(_LOG_POLL_MS if gone else None):
                    if fd == runtime:
                        return
                    if fd == pidfd and not gone:
                        gone = True
                        poller.unregister(pidfd)
        finally:
            os.close(runtime)
            if pidfd is not None:
                os.close(pidfd)


class DetachedProcess(_RuntimeProcess):
    """A process a detached runtime started, with the caller's descriptors as its stdio.

    Implements :class:`hcsoci.cow.Process`.  A descriptor the caller offered
    (a file, a pipe, ``/dev/null``) is the process's own stdout or stdin: no
    runtime and no relay copies it.  The runtime exits once the process runs;
    this process's subreaper (:mod:`hcsoci.runtime.subreaper`) reaps it and
    reports its exit code (``128 + N`` for a signal N).  Never a terminal.
    """

    def __init__(
        self,
        container: Container,
        subreaper: Subreaper,
        launched: Launched,
        stdio: _ProcessStdio,
        scratch_files: list[Path],
        is_init: bool,
    ) -> None:
        super().__init__(container, stdio, scratch_files, is_init)
        self._subreaper = subreaper
        self._token = launched.token
        self._pid = launched.pid
        self._pidfd = launched.pidfd
        self._code: int | None = None

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        """Always :class:`StateError`: a handed-over process has no terminal."""
        raise StateError(f"{self!r}: the process has no terminal to resize")

    def _gone(self) -> bool:
        return self.runtime_status() is not None

    def wait(self) -> None:
        """Block until the process was reaped."""
        if self._code is None:
            self._code = self._subreaper.wait(self._token)
        self._exited()

    def exit_code(self) -> int:
        """The exit code; raises :class:`StateError` while the process runs."""
        code = self.runtime_status()
        if code is None:
            raise StateError(f"{self!r} is still running")
        self._exited()
        return code

    def runtime_status(self) -> int | None:
        """The exit code once the process was reaped, else None."""
        if self._code is None and not self._closed:
            self._code = self._subreaper.poll(self._token)
        return self._code

    def close(self) -> None:
        """Release our handles and pipe ends; the process keeps running if it still does."""
        if not self._mark_closed():
            return
        self._subreaper.forget(self._token)
        self._stdio.close()
        self._remove_scratch_files()


def _startup_error(
    container: Container, args: list[str], runtime_log: Path, code: int | None
) -> HcsociError:
    message = read_runtime_log(runtime_log) or f"exited with status {code}"
    command = args[0] if args else ""
    if "executable file not found" in message or (
        "no such file or directory" in message and command and command in message
    ):
        return NotFoundError(
            f"spec.process.args[0]: {command!r} not found in container {container.id()}: {message}"
        )
    if "permission denied" in message and command and f'"{command}"' in message:
        return NotExecutableError(
            f"spec.process.args[0]: {command!r} is not executable in container "
            f"{container.id()}: {message}"
        )
    if "chdir" in message or "cwd" in message:
        return InvalidArgumentError(f"spec.process.cwd: {message}")
    return OCIRuntimeError(f"{container.runtime.name} in container {container.id()}: {message}")


class Container(ContainerLifecycle["ContainerProcess | DetachedProcess"]):
    """A container on this machine, run by an OCI runtime (``cow.Container``).

    Made by :func:`hcsoci.create_container` (state ``created``) or loaded by
    :func:`open_container`.  ``start`` runs the spec's process as init with its
    output in the container's log file (``<bundle>/container.log``); a ``Cmd``
    with ``spec=None`` runs the init with relayed stdio instead.  The rules of
    the lifecycle are :class:`~hcsoci.lifecycle.ContainerLifecycle`'s.
    """

    def __init__(
        self,
        container_id: str,
        bundle: Path,
        runtime: Runtime,
        spec: oci.Spec,
        store: Store,
        *,
        owner: str = "",
        state: str = "created",
        init_pid: int = 0,
    ) -> None:
        super().__init__(container_id, spec, store, owner=owner, state=state)
        self.bundle = bundle
        self.runtime = runtime
        self._init_pid = init_pid
        self._init_exit_code: int | None = None

    def __repr__(self) -> str:
        return f"<Container {self._id} {self._state.name}>"

    @property
    def log_path(self) -> Path:
        """Where ``start`` sends the init's output."""
        return self.bundle / "container.log"

    def wait(self) -> None:
        """Block until the init has exited."""
        init = self._init
        if init is not None:
            init.wait()
            return
        pid = self._running_init_pid()
        if pid == 0:
            if self._state.name == "created":
                raise StateError(f"container {self._id}: not started")
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            select.select([pidfd], [], [])
        finally:
            os.close(pidfd)

    def properties(self, ctx: Context) -> ContainerProperties:
        """State, init pid, processes and the cgroup's memory and CPU figures."""
        state = self.state_type().name
        props = ContainerProperties(
            id=self._id,
            owner=self.owner,
            state=state,
            init_pid=self._init_pid if state in ("running", "paused") else 0,
            exit_code=self._init_exit_code,
            bundle=str(self.bundle),
            runtime=self.runtime.name,
        )
        if state in ("running", "paused"):
            with contextlib.suppress(NotFoundError):
                props.processes = self.runtime.ps(self._id)
            props.memory_usage_bytes, props.cpu_usage_ns = _cgroup_usage(self._init_pid)
        return props

    def init_exit_code(self) -> int | None:
        """The init's exit code when this handle saw it exit, else None."""
        return self._init_exit_code

    # -- what the lifecycle asks of this host --

    def _observed_state(self) -> str:
        init = self._init
        if init is not None:  # ours: no need to ask the runtime
            return "stopped" if init.runtime_status() is not None else "running"
        runtime_state = self.runtime.state(self._id)
        return "stopped" if runtime_state is None else runtime_state.status

    def _close_handles(self) -> None:
        init = self._init
        if init is not None:
            init.close()

    def _running_init_pid(self) -> int:
        if self._state.name == "created":
            return 0
        runtime_state = self.runtime.state(self._id)
        if runtime_state is None or runtime_state.status == "stopped":
            return 0
        return runtime_state.pid

    def _signal_running_init(self, ctx: Context, sig: int) -> None:
        init = self._init
        if init is not None:
            if not init.signal(ctx, sig):
                raise StateError(f"container {self._id}: the init is not running")
            return
        if self._running_init_pid() == 0:
            raise StateError(f"container {self._id}: the init is not running")
        self.runtime.kill(self._id, sig)

    def _launch_init(
        self, ctx: Context, pipes: Pipes, fds: StdioFds, to_log: bool
    ) -> tuple[ContainerProcess | DetachedProcess, int]:
        assert self.spec.process is not None
        pid_file, runtime_log = self.bundle / "init.pid", self.bundle / "runtime.log"
        if to_log:
            stdio = _ProcessStdio((False, False, False), False, None)
            log_fd = os.open(
                self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640
            )
            stdio.child_fds[1] = stdio.child_fds[2] = log_fd
            stdio._to_close.append(log_fd)
        else:
            stdio = _ProcessStdio(
                pipes, self.spec.process.terminal, self.spec.process.console_size, fds
            )
            if stdio.handed_over:
                command = self.runtime.detached_run_command(
                    self._id, self.bundle, pid_file=pid_file, log_file=runtime_log
                )
                detached = self._launch_detached(
                    command, stdio, pid_file, runtime_log, [], True, self.spec.process.args or []
                )
                self._init_pid = detached.pid()
                return detached, self._init_pid
        process = self._spawn(
            stdio,
            pid_file,
            runtime_log,
            [],
            True,
            lambda: self.runtime.spawn_run(
                self._id,
                self.bundle,
                pid_file=pid_file,
                log_file=runtime_log,
                stdin=stdio.child_fds[0],
                stdout=stdio.child_fds[1],
                stderr=stdio.child_fds[2],
            ),
            self.spec.process.args or [],
        )
        self._init_pid = process.pid()
        return process, self._init_pid

    def _launch_exec(
        self, ctx: Context, process: oci.Process, pipes: Pipes, fds: StdioFds
    ) -> ContainerProcess | DetachedProcess:
        exec_dir = self.bundle / "exec"
        exec_dir.mkdir(mode=0o700, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        process_file = exec_dir / f"{token}.json"
        pid_file, runtime_log = exec_dir / f"{token}.pid", exec_dir / f"{token}.log"
        write_private_file(process_file, msgspec.json.encode(process))
        scratch = [process_file, pid_file, runtime_log]
        try:
            stdio = _ProcessStdio(pipes, process.terminal, process.console_size, fds)
            if stdio.handed_over:
                command = self.runtime.detached_exec_command(
                    self._id, process_file, pid_file=pid_file, log_file=runtime_log
                )
                return self._launch_detached(
                    command, stdio, pid_file, runtime_log, scratch, False, process.args or []
                )
            return self._spawn(
                stdio,
                pid_file,
                runtime_log,
                scratch,
                False,
                lambda: self.runtime.spawn_exec(
                    self._id,
                    process_file,
                    pid_file=pid_file,
                    log_file=runtime_log,
                    stdin=stdio.child_fds[0],
                    stdout=stdio.child_fds[1],
                    stderr=stdio.child_fds[2],
                ),
                process.args or [],
            )
        except BaseException:
            for path in scratch:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise

    def _spawn(
        self,
        stdio: _ProcessStdio,
        pid_file: Path,
        runtime_log: Path,
        scratch: list[Path],
        is_init: bool,
        spawn: Any,
        args: list[str],
    ) -> ContainerProcess:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        try:
            popen = spawn()
        except BaseException:
            stdio.close_child_ends()
            stdio.close()
            raise
        stdio.close_child_ends()
        process = ContainerProcess(self, popen, stdio, pid_file, runtime_log, scratch, is_init)
        try:
            process._await_running(args)
        except BaseException:
            if popen.poll() is None:
                popen.kill()  # interrupted while waiting: do not leave the runtime behind
                popen.wait()
            process.close()
            raise
        return process

    def _launch_detached(
        self,
        command: list[str],
        stdio: _ProcessStdio,
        pid_file: Path,
        runtime_log: Path,
        scratch: list[Path],
        is_init: bool,
        args: list[str],
    ) -> DetachedProcess:
        """A detached runtime on ``stdio``'s child ends; its process is the subreaper's child."""
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        subreaper = default_subreaper()
        fds = stdio.child_fds
        try:
            launched = subreaper.launch(command, pid_file, (fds[0], fds[1], fds[2]))
        except BaseException as err:
            stdio.close()
            if isinstance(err, LaunchFailed):
                raise _startup_error(self, args, runtime_log, err.code) from None
            raise
        finally:
            stdio.close_child_ends()
        return DetachedProcess(self, subreaper, launched, stdio, scratch, is_init)

    def _init_exited(self, init: _RuntimeProcess) -> None:
        if self._state.name != "stopped":
            self._init_exit_code = init.runtime_status()
        self._mark_stopped()


def _cgroup_usage(pid: int) -> tuple[int | None, int | None]:
    """(memory bytes, CPU ns) of ``pid``'s cgroup: v1 memory/cpuacct, else the v2 files."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None, None
    memory = cpu = None
    unified = ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if "memory" in names:
            memory = _read_int(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        if "cpuacct" in names:
            cpu = _read_int(f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage")
        if controllers == "":
            unified = path
    if memory is None and unified:
        memory = _read_int(f"/sys/fs/cgroup{unified}/memory.current")
    if cpu is None and unified:
        with contextlib.suppress(FileNotFoundError, ValueError):
            for line in Path(f"/sys/fs/cgroup{unified}/cpu.stat").read_text().splitlines():
                key, value = line.split()
                if key == "usage_usec":
                    cpu = int(value) * 1000
    return memory, cpu


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError, OSError):
        return None


def open_container(container_id: str, store: Store | None = None) -> Container | RemoteContainer:
    """A handle on a container recorded in the state store (another process made it).

    A container in a utility VM is reached through its VM's controller process:
    the handle is a :class:`~hcsoci.uvm.remote.RemoteContainer`.
    """
    check_id(container_id, "container id")
    store = store or open_store()
    row = container_table.get(store, container_id)
    if row is None:
        raise NotFoundError(f"container id: {container_id!r} does not exist")
    if row.host:
        from hcsoci.uvm.remote import open_remote_container  # only for VM containers

        return open_remote_container(container_id, store)
    if row.state == "creating":
        raise StateError(f"container {container_id}: still being created")
    bundle = Path(row.bundle)
    try:
        spec = oci.decode_spec((bundle / "config.json").read_bytes())
    except FileNotFoundError as err:
        raise NotFoundError(f"container {container_id}: bundle {str(bundle)!r} is gone") from err
    runtime = Runtime(row.runtime or "")
    return Container(
        container_id,
        bundle,
        runtime,
        spec,
        store,
        owner=row.owner,
        state=row.state,
        init_pid=row.init_pid,
    )
