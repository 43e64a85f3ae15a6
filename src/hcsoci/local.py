"""LocalHost: a process host for this machine.

:class:`LocalHost` starts ordinary processes from :class:`ProcessParameters`:
pipes only for the streams asked for (``/dev/null`` for the others), a
pseudo-terminal with a controlling terminal when ``emulate_console`` is set,
the given environment *exactly* (nothing is inherited, as in a container), the
working directory, and ``user`` as a name or ``uid[:gid]``.  A descriptor in
``stdio_fds`` becomes the process's own stream as it is (see :mod:`hcsoci.cow`);
it is never declined, a terminal included (the process is in the caller's
process group, as with ``subprocess``).

>>> from hcsoci import command
>>> command(LocalHost(), "echo", "hi").output()
b'hi\\n'

The returned :class:`LocalProcess` is a ``cow.Process``.  Its pipes are
non-blocking underneath, so closing the process from another thread cuts a
read that would otherwise wait forever (a grandchild holding stdout open).
Signals go through a pidfd, so they never reach a recycled pid.  Processes
start with ``posix_spawn`` (:mod:`hcsoci.spawn`); another user's identity is
taken on by ``setpriv(1)`` from util-linux, which then executes the command.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import threading
from typing import IO, Any, cast

from hcsoci import relay
from hcsoci.context import Context
from hcsoci.cow import ProcessParameters, Stdio
from hcsoci.errors import (
    HcsociError,
    InvalidArgumentError,
    NotExecutableError,
    NotFoundError,
    StateError,
)
from hcsoci.gcs import users
from hcsoci.gcs.terminal import set_window_size
from hcsoci.pipes import PipeEnd
from hcsoci.spawn import spawn

__all__ = ["LocalHost", "LocalProcess", "resolve_user"]

log = logging.getLogger(__name__)

_PIPE_SIZE = 1 << 20
"""Capacity of the stdout/stderr pipes: fewer wake-ups for bulk output."""

_VEOF = b"\x04"
"""What "end of input" is on a terminal in canonical mode (^D)."""


class LocalHost:
    """Runs processes on this machine (hcsshim's ``cow.ProcessHost``, not OCI)."""

    def os(self) -> str:
        """Always ``"linux"``."""
        return "linux"

    def is_oci(self) -> bool:
        """False: ``create_process`` takes :class:`ProcessParameters`."""
        return False

    def create_process(self, ctx: Context, config: Any) -> LocalProcess:
        """Start the process ``config`` describes.

        Bad parameters (no arguments, a missing executable or working
        directory, an unknown user) raise an :class:`hcsoci.HcsociError` naming
        the field and value; nothing is left open then.
        """
        if not isinstance(config, ProcessParameters):
            raise InvalidArgumentError(
                f"config: LocalHost takes ProcessParameters, not {type(config).__name__}"
            )
        ctx.check()
        _reap_orphans()
        if not config.command_args:
            raise InvalidArgumentError("command_args: empty, nothing to run")
        for index, arg in enumerate(config.command_args):
            if "\0" in arg:
                raise InvalidArgumentError(f"command_args[{index}] {arg!r}: contains NUL")
        env = _environment(config.environment)
        cwd = config.working_directory or None
        if cwd is not None and "\0" in cwd:
            raise InvalidArgumentError(f"working_directory {cwd!r}: contains NUL")
        identity = resolve_user(config.user)
        executable = _find_executable(
            config.command_args[0], env.get("PATH"), cwd, check=identity is not None
        )
        height, width = config.console_size
        if config.emulate_console and not (0 <= height <= 0xFFFF and 0 <= width <= 0xFFFF):
            raise InvalidArgumentError(f"console_size {config.console_size!r}: out of range")
        return _Start(config, executable, env, cwd, identity).run()


class _Start:
    """One process start: what it opens is closed again if the start fails."""

    def __init__(
        self,
        config: ProcessParameters,
        executable: str,
        env: dict[str, str],
        cwd: str | None,
        identity: tuple[int, int, list[int]] | None,
    ) -> None:
        self.config = config
        self.executable = executable
        self.env = env
        self.cwd = cwd
        self.identity = identity
        self.fds: list[int] = []  # descriptors not (yet) owned by a PipeEnd
        self.child_fds: list[int] = []  # the child's ends: closed once it started
        self.ends: list[PipeEnd] = []

    def run(self) -> LocalProcess:
        try:
            return self._run()
        except BaseException:
            for end in self.ends:
                end.close()
            for fd in self.fds:
                os.close(fd)
            raise

    def _run(self) -> LocalProcess:
        config = self.config
        argv = list(config.command_args)
        path = self.executable
        if self.identity is not None:
            uid, gid, groups = self.identity
            # posix_spawn cannot change identity: setpriv(1) does, then executes.
            argv = [
                _setpriv(),
                f"--reuid={uid}",
                f"--regid={gid}",
                f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
                "--",
                path,
                *argv[1:],
            ]
            path = argv[0]
        console: int | None = None
        terminal: str | None = None
        stdin = stdout = stderr = None
        child_stdio: tuple[int | None, int | None, int | None] = (None, None, None)
        if config.emulate_console:
            console, slave = os.openpty()
            self.fds += [console, slave]
            self.child_fds.append(slave)  # open until the child has opened its own
            terminal = os.ttyname(slave)
            height, width = config.console_size
            if height and width:
                set_window_size(slave, width, height)
            if config.create_stdin_pipe:
                stdin = self._end(os.dup(console), writable=True, name="stdin")
            if config.create_stdout_pipe:
                stdout = self._end(os.dup(console), writable=False, name="stdout", eio_is_eof=True)
        else:
            given = config.stdio_fds
            child_stdin, stdin = self._stream(given[0], config.create_stdin_pipe, "stdin")
            child_stdout, stdout = self._stream(given[1], config.create_stdout_pipe, "stdout")
            child_stderr, stderr = self._stream(given[2], config.create_stderr_pipe, "stderr")
            child_stdio = (child_stdin, child_stdout, child_stderr)
        try:
            pid = spawn(path, argv, self.env, stdio=child_stdio, cwd=self.cwd, terminal=terminal)
        except OSError as err:
            raise self._start_error(err) from err
        for fd in self.child_fds:
            os.close(fd)
            self.fds.remove(fd)
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # no pidfd support: signal by pid, while it is known unreaped
            pidfd = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("started process %d", pid, extra={"command_args": config.command_args})
        return LocalProcess(pid, pidfd, (stdin, stdout, stderr), console)

    def _end(self, fd: int, **options: Any) -> PipeEnd:
        if fd not in self.fds:
            self.fds.append(fd)
        end = PipeEnd(fd, **options)
        self.fds.remove(fd)
        self.ends.append(end)
        return end

    def _stream(
        self, given: int | None, wanted: bool, name: str
    ) -> tuple[int | None, PipeEnd | None]:
        """The child's descriptor for one stream and our end of its pipe (if any).

        A descriptor the caller gave is taken as it is (a private copy, 3 or
        above, so that the child's 0-2 can be set in any order).
        """
        if given is None:
            return self._pipe(wanted, name)
        copy = relay.take_descriptor(given, f"stdio_fds: {name}")
        self.fds.append(copy)
        self.child_fds.append(copy)
        return copy, None

    def _pipe(self, wanted: bool, name: str) -> tuple[int | None, PipeEnd | None]:
        if not wanted:
            return None, None
        read_end, write_end = os.pipe()
        self.fds += [read_end, write_end]
        if name == "stdin":
            self.child_fds.append(read_end)
            return self._above_stdio(read_end), self._end(write_end, writable=True, name=name)
        self.child_fds.append(write_end)
        if _PIPE_SIZE:
            # Over the unprivileged limit the default size still works.
            with contextlib.suppress(OSError):
                fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        return self._above_stdio(write_end), self._end(read_end, writable=False, name=name)

    def _above_stdio(self, fd: int) -> int:
        """``fd``, or a copy of it numbered 3 or more (the child's 0-2 are being replaced)."""
        if fd > 2:
            return fd
        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        self.fds.append(copy)
        self.child_fds.append(copy)
        return copy

    def _start_error(self, err: OSError) -> HcsociError:
        name = self.config.command_args[0]
        if self.cwd is not None and not os.path.isdir(self.cwd):
            return NotFoundError(f"working_directory {self.cwd!r}: no such directory")
        if isinstance(err, FileNotFoundError):
            return NotFoundError(f"command_args[0] {name!r}: no such file")
        if isinstance(err, PermissionError) or err.errno == errno.ENOEXEC:
            return NotExecutableError(f"command_args[0] {name!r}: {err.strerror}")
        return HcsociError(f"starting command_args[0] {name!r}: {err.strerror}")


class LocalProcess:
    """A process started by :class:`LocalHost` (a ``cow.Process``)."""

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        stdio: tuple[PipeEnd | None, PipeEnd | None, PipeEnd | None],
        console: int | None,
    ) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._stdin, self._stdout, self._stderr = stdio
        self._console = console
        self._status: int | None = None  # os.waitstatus_to_exitcode() once reaped
        self._status_lost = False  # someone else reaped it (os.wait() elsewhere)
        self._wait_lock = threading.Lock()  # held by the one thread blocked in waitpid
        self._lock = threading.Lock()  # guards the descriptors against close()
        self._closed = False

    def pid(self) -> int:
        """The process id."""
        return self._pid

    def stdio(self) -> Stdio:
        """(stdin, stdout, stderr): the pipes asked for, else None.

        With a console, stdin and stdout are the terminal and stderr is None.
        """
        return (
            cast("IO[bytes] | None", self._stdin),
            cast("IO[bytes] | None", self._stdout),
            cast("IO[bytes] | None", self._stderr),
        )

    def close_stdin(self, ctx: Context) -> None:
        """Let the process read end of file: close its stdin pipe (^D on a terminal)."""
        with self._lock:
            if self._console is not None and not self._closed:
                try:
                    os.write(self._console, _VEOF)
                except OSError as err:  # the terminal is gone with the process
                    log.debug("writing EOF to console failed: %s", err)
        if self._stdin is not None:
            self._stdin.close()

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        """Set the terminal's size; the process gets SIGWINCH."""
        if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
            raise InvalidArgumentError(f"console size {width}x{height}: out of range")
        with self._lock:
            if self._console is None:
                raise StateError(f"process {self._pid} has no console to resize")
            if self._closed:
                raise StateError(f"process {self._pid} is closed")
            set_window_size(self._console, width, height)

    def kill(self, ctx: Context) -> bool:
        """SIGKILL the process; False when it had exited already."""
        return self.signal(ctx, signal.SIGKILL)

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig``; False when the process had exited already."""
        with self._lock:
            if self._status is not None or self._status_lost:
                return False
            if self._closed:
                raise StateError(f"process {self._pid} is closed")
            try:
                if self._pidfd is None:
                    if self._exited():
                        return False
                    os.kill(self._pid, sig)  # unreaped, so the pid is still ours
                elif _readable(self._pidfd):
                    return False  # exited: a signal to a zombie reaches nobody
                else:
                    signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                return False
            except OSError as err:
                if err.errno == errno.EINVAL:
                    raise InvalidArgumentError(f"signal {sig!r}: invalid") from err
                raise
            return True

    def wait(self) -> None:
        """Block until the process has exited (any number of threads may wait)."""
        if self._status is not None or self._status_lost:
            return
        with self._wait_lock:
            if self._status is None and not self._status_lost:
                try:
                    _, status = os.waitpid(self._pid, 0)
                except ChildProcessError:
                    self._status_lost = True
                else:
                    self._status = os.waitstatus_to_exitcode(status)

    def exit_code(self) -> int:
        """The exit code; ``128 + N`` after signal N.  Raises StateError while running."""
        if self._status is None and not self._exited():
            raise StateError(f"process {self._pid} is still running")
        if self._status is None:
            raise StateError(f"process {self._pid}: its exit status was taken by another waiter")
        return 128 - self._status if self._status < 0 else self._status

    def close(self) -> None:
        """Release every descriptor.  The process keeps running; it is reaped later."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._pidfd, self._console):
                if fd is not None:
                    os.close(fd)
            self._pidfd = self._console = None
        for end in (self._stdin, self._stdout, self._stderr):
            if end is not None:
                end.close()
        if not self._exited():
            with _orphans_lock:
                _orphans.append(self)

    def _exited(self) -> bool:
        """Whether the process has exited, reaping it if nobody is waiting for it yet."""
        if self._status is not None or self._status_lost:
            return True
        if not self._wait_lock.acquire(blocking=False):
            # A thread is blocked in wait(): it reaps; ask the pidfd meanwhile.
            pidfd = self._pidfd
            if pidfd is None or not _readable(pidfd):
                return False
            self.wait()
            return True
        try:
            if self._status is None and not self._status_lost:
                try:
                    pid, status = os.waitpid(self._pid, os.WNOHANG)
                except ChildProcessError:
                    self._status_lost = True
                    return True
                if pid == 0:
                    return False
                self._status = os.waitstatus_to_exitcode(status)
            return True
        finally:
            self._wait_lock.release()

    def __del__(self) -> None:
        # Like a file object: an unclosed process releases its descriptors.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"<LocalProcess pid={self._pid} status={self._status}>"


def resolve_user(user: str) -> tuple[int, int, list[int]] | None:
    """``user`` (a name or ``uid[:gid]``, the gid a number or group name) as (uid, gid, groups).

    The rule every host applies (:mod:`hcsoci.gcs.users`): None for ``""`` (the
    caller's own identity); a name must exist in the passwd database; a numeric
    uid need not (its gid is then 0, as in runc).
    """
    try:
        return users.resolve_user(user)
    except users.UserSyntaxError as err:
        raise InvalidArgumentError(str(err)) from None
    except users.UnknownUserError as err:
        raise NotFoundError(str(err.args[0])) from None


def _environment(environment: dict[str, str]) -> dict[str, str]:
    for key, value in environment.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidArgumentError(f"environment key {key!r}: not a variable name")
        if "\0" in value:
            raise InvalidArgumentError(f"environment[{key!r}] {value!r}: contains NUL")
    return dict(environment)


def _find_executable(name: str, path: str | None, cwd: str | None, *, check: bool) -> str:
    """The file to execute for ``name``: searched like execvp(3) in the *child's* PATH.

    A name with a slash is returned as it is (relative to the working
    directory); ``check`` verifies it exists and is executable first.
    """
    if "/" in name:
        if check:
            candidate = os.path.join(cwd or os.getcwd(), name)
            if not os.path.exists(candidate):
                raise NotFoundError(f"command_args[0] {name!r}: no such file")
            if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
                raise NotExecutableError(f"command_args[0] {name!r}: not an executable file")
        return name
    search = path if path is not None else os.defpath
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise NotFoundError(f"command_args[0] {name!r}: executable not found in PATH {search!r}")


_setpriv_path: str | None = None


def _setpriv() -> str:
    global _setpriv_path
    if _setpriv_path is None:
        found = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
        if found is None:
            raise NotFoundError("user: running as another user needs setpriv(1) (util-linux)")
        _setpriv_path = found
    return _setpriv_path


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# Processes closed while still running, reaped on later starts (like subprocess).
_orphans: list[LocalProcess] = []
_orphans_lock = threading.Lock()


def _reap_orphans() -> None:
    if not _orphans:
        return
    with _orphans_lock:
        _orphans[:] = [process for process in _orphans if not process._exited()]
