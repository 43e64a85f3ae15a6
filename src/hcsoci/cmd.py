"""Cmd: run a command in any process host, the way ``subprocess`` runs one here.

A :class:`Cmd` takes a process host (this machine, a container, a utility VM)
and an OCI process spec, starts the process, relays its standard streams to and
from ordinary Python streams, kills it when its context is done, and reports how
it exited.  It only speaks the ``cow.Process`` protocol, so every host gets the
same semantics (those of hcsshim's ``hcsoci.Cmd``):

* ``start()`` refuses a context that is done already.
* The stdin relay is not waited for (the caller's reader may block forever); at
  end of input it closes the process's stdin.  Its error is reported by
  ``wait()`` only when nothing else failed, and a process that stops reading
  (``EPIPE``) is not an error.
* When the context becomes done the process is killed; a finished command
  stops watching the context.
* ``wait()`` may be called once.  After the process exits, the stdout/stderr
  relays get ``copy_after_exit_timeout`` seconds to finish (0: no limit), and
  no longer than the context lives; then the process is closed to cut them and
  ``wait()`` raises :class:`ClosedPipeError`.  So ``wait()`` never hangs once
  the process has exited and the context is done.
* Each relay logs ``command copy complete`` with the stream name and byte
  count (debug), or at error level with the error.

Descriptors are handed over, not relayed, where that can be done: when a
stream is a real descriptor (a file, ``/dev/null``, a pipe, a socket: an object
with a working ``fileno()``, see :func:`hcsoci.relay.handover_fd`) and the host
runs the process on this machine (:class:`hcsoci.LocalHost`, a container over
runc), the process gets that descriptor as its own stdio, as with
``subprocess``; no thread copies anything, and a process writing to a pipe
whose reader went away gets ``SIGPIPE`` from the kernel.  The log then says
``command copy complete: <stream>, handed over``.  Python objects
(``io.BytesIO``), a process with a terminal and remote hosts (a utility VM and
its containers) are relayed.  When a relay fails to write to its sink (a
reader that went away, ``EPIPE``, or any write error), the process is sent
``SIGPIPE`` and the rest of its output is discarded; if it has not ended
:data:`SIGPIPE_GRACE` seconds later (it handled or, as a container's init,
never got the signal) it is killed.  ``wait()`` reports its exit status
(``128 + 13`` unless it handled the signal).  A sink's ``EPIPE`` itself is
not reported as an error: the reader went away, which is its business.

>>> from hcsoci import LocalHost
>>> command(LocalHost(), "sh", "-c", "exit 3").run()
Traceback (most recent call last):
    ...
hcsoci.cmd.ExitError: process exited with exit code 3
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import threading
import warnings
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any

from hcsoci import oci, relay
from hcsoci.context import Context, background
from hcsoci.cow import (
    NO_FDS,
    OCIProcessParameters,
    Process,
    ProcessHost,
    ProcessParameters,
    StdioFds,
)
from hcsoci.errors import HcsociError, InvalidArgumentError, StateError

__all__ = [
    "DEFAULT_PATH",
    "SIGPIPE_GRACE",
    "ClosedPipeError",
    "Cmd",
    "ExitError",
    "ExitState",
    "command",
    "command_context",
    "process_parameters",
]

_log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` :func:`command` gives a process on a Linux host."""

Logger = logging.Logger | logging.LoggerAdapter[Any]

SIGPIPE_GRACE = 2.0
"""Seconds a process may run on after the SIGPIPE of a broken relayed sink, before SIGKILL."""


class ExitState:
    """Whether a process exited, and with which code."""

    __slots__ = ("_code", "_exited")

    def __init__(self, exited: bool = False, code: int = 0) -> None:
        self._exited = exited
        self._code = code

    @property
    def exited(self) -> bool:
        """Whether the exit code is known."""
        return self._exited

    @property
    def exit_code(self) -> int:
        """The exit code (``128 + N`` after signal N), or -1 when it is not known."""
        return self._code if self._exited else -1

    def __repr__(self) -> str:
        return f"ExitState(exit_code={self.exit_code})"


class ExitError(HcsociError):
    """The process exited with a non-zero exit code."""

    def __init__(self, exit_state: ExitState) -> None:
        super().__init__(f"process exited with exit code {exit_state.exit_code}")
        self.exit_state = exit_state
        self.output: bytes | None = None
        """What :meth:`Cmd.output` had captured, when it raised this."""

    @property
    def exit_code(self) -> int:
        """The process's exit code."""
        return self.exit_state.exit_code


class ClosedPipeError(HcsociError):
    """The stdout/stderr relays were cut: they had not finished
    ``copy_after_exit_timeout`` seconds after the process exited (Go's
    ``io.ErrClosedPipe``).  Some output may be missing."""

    def __init__(self, message: str = "read/write on closed pipe") -> None:
        super().__init__(message)
        self.output: bytes | None = None
        """What :meth:`Cmd.output` had captured, when it raised this."""


class _FieldsLogger(logging.LoggerAdapter[Any]):
    """A logger carrying fields (a logrus entry): they are merged into each record's extra."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def _with_fields(log: Logger, **fields: Any) -> _FieldsLogger:
    # A plain LoggerAdapter replaces every record's extra with its own: unwrap
    # it, keeping its fields, or ours would be lost.
    if isinstance(log, _FieldsLogger) or type(log) is logging.LoggerAdapter:
        return _FieldsLogger(log.logger, {**(log.extra or {}), **fields})
    return _FieldsLogger(log, fields)


class Cmd:
    """A command being prepared or run in a process host.

    Set the attributes, then :meth:`run` (or :meth:`start` and :meth:`wait`, or
    :meth:`output`).  ``stdin`` is any binary reader and ``stdout``/``stderr``
    any binary writer.  A real descriptor is handed to the process itself when
    the host can take it (see the module docs), else relayed: descriptor to
    descriptor when both ends are real ones (see :mod:`hcsoci.relay`).  None
    means the process gets no pipe for that stream (``/dev/null``).
    """

    def __init__(
        self,
        host: ProcessHost,
        spec: oci.Process | None = None,
        *,
        stdin: relay.Reader | None = None,
        stdout: relay.Writer | None = None,
        stderr: relay.Writer | None = None,
        log: Logger | None = None,
        context: Context | None = None,
        copy_after_exit_timeout: float = 0.0,
    ) -> None:
        self.host = host
        """The process host in which to start the process."""
        self.spec = spec
        """The OCI process spec; None only for a created container's initial process."""
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.log: Logger | None = log
        """Where relay status goes (None: this module's logger); start() adds a pid field."""
        self.context = context
        """The process is killed when this context becomes done."""
        self.copy_after_exit_timeout = copy_after_exit_timeout
        """Seconds the stdout/stderr relays may run on after the process exited (0: no limit)."""
        self.process: Process | None = None
        """Filled in by :meth:`start`."""
        self.exit_state = ExitState()
        """Filled in by :meth:`wait`."""
        self._relays: list[threading.Thread] = []
        self._relays_running = 0
        self._relays_done: threading.Event | None = None  # also set when the context is done
        self._io_error: BaseException | None = None
        self._stdin_error: BaseException | None = None
        self._stop_watching: Callable[[], bool] | None = None
        self._offered: StdioFds = NO_FDS
        self._lock = threading.Lock()
        self._waited = False

    def start(self) -> None:
        """Start the process and its relays.

        If this succeeds, :meth:`wait` must be called to release everything.
        Bad input (a stream that cannot be read or written, a spec the host
        cannot run) raises an :class:`hcsoci.HcsociError` and starts nothing.
        """
        if self.process is not None:
            raise StateError("Cmd.start: already started")
        _check_stream("stdin", self.stdin, "read")
        _check_stream("stdout", self.stdout, "write")
        _check_stream("stderr", self.stderr, "write")
        self._offered = self._handover_fds()
        config = self._config()
        ctx = self.context
        if ctx is not None:
            ctx.check()
        process = self.host.create_process(ctx or background(), config)
        self.process = process
        self.log = _with_fields(self.log or _log, pid=process.pid())
        try:
            self._start_relays(process)
            if ctx is not None:
                self._stop_watching = ctx.after_done(self._kill_on_done)
        except BaseException:
            self._abandon(process)
            raise

    def wait(self) -> None:
        """Wait for the process and its output relays, then close the process.

        Can be called once.  Raises :class:`ExitError` for a non-zero exit code,
        :class:`ClosedPipeError` when the output relays had to be cut, else the
        first relay error (the stdin relay's last).
        """
        process = self.process
        if process is None:
            raise StateError("Cmd.wait: not started")
        with self._lock:
            if self._waited:
                raise StateError("Cmd.wait: already called")
            self._waited = True
        log = self.log or _log
        try:
            process.wait()
        except Exception as err:
            log.warning("process wait failed: %s", err, extra={"error": str(err)})
        state = ExitState()
        exit_error: Exception | None = None
        try:
            state = ExitState(True, process.exit_code())
        except Exception as err:
            exit_error = err
        cut = self._finish_relays(process)
        if self._stop_watching is not None:
            self._stop_watching()
        process.close()
        self.exit_state = state
        if exit_error is not None:
            raise exit_error
        if state.exit_code != 0:
            raise ExitError(state)
        if cut:
            raise ClosedPipeError() from self._io_error
        io_error = self._io_error or self._stdin_error
        if io_error is not None:
            raise io_error

    def run(self) -> None:
        """:meth:`start` then :meth:`wait`."""
        self.start()
        self.wait()

    def output(self) -> bytes:
        """Run the command and return its stdout.

        On :class:`ExitError` or :class:`ClosedPipeError` the output captured so
        far is the error's ``output``.
        """
        if self.stdout is not None:
            raise InvalidArgumentError(f"stdout {self.stdout!r}: already set; output() captures it")
        buffer = io.BytesIO()
        self.stdout = buffer
        try:
            self.run()
        except (ExitError, ClosedPipeError) as err:
            err.output = buffer.getvalue()
            raise
        return buffer.getvalue()

    def _handover_fds(self) -> StdioFds:
        """The descriptors to offer the host for the process's own stdio."""
        if self.spec is not None and self.spec.terminal:
            return NO_FDS  # the process's stdio is its terminal, relayed
        return (
            None if self.stdin is None else relay.handover_fd(self.stdin, reading=True),
            None if self.stdout is None else relay.handover_fd(self.stdout, reading=False),
            None if self.stderr is None else relay.handover_fd(self.stderr, reading=False),
        )

    def _config(self) -> Any:
        if self.host.is_oci():
            terminal = self.spec is not None and self.spec.terminal
            return OCIProcessParameters(
                process=self.spec,
                create_stdin_pipe=self.stdin is not None,
                create_stdout_pipe=self.stdout is not None,
                create_stderr_pipe=self.stderr is not None and not terminal,
                stdio_fds=self._offered,
            )
        if self.spec is None:
            raise InvalidArgumentError("spec: None; a non-OCI host needs a process spec")
        return process_parameters(
            self.spec,
            stdin=self.stdin is not None,
            stdout=self.stdout is not None,
            stderr=self.stderr is not None,
            stdio_fds=self._offered,
        )

    def _start_relays(self, process: Process) -> None:
        stdin, stdout, stderr = process.stdio()
        if self.stdout is not None or self.stderr is not None:
            self._relays_done = threading.Event()
        # A guard count, so that a relay finishing before the next one starts
        # cannot signal "all done" early.
        self._relays_running = 1
        pid = process.pid()
        offered = self._offered
        if self.stdin is not None:
            if stdin is None:
                if offered[0] is None:
                    raise HcsociError(f"process {pid}: the host gave no stdin pipe")
                self._log_handover("stdin")
            else:
                # Not one of the waited relays: nothing can reliably unblock a read
                # of the caller's stdin when the process exits.
                self._spawn(self._relay_stdin, (process, stdin), f"hcsoci-cmd-{pid}-stdin", False)
        elif stdin is not None:
            process.close_stdin(background())  # a host that always makes one: no input
        for name, source, sink, fd in (
            ("stdout", stdout, self.stdout, offered[1]),
            ("stderr", stderr, self.stderr, offered[2]),
        ):
            if sink is None:
                continue
            if source is None:
                if fd is None:
                    raise HcsociError(f"process {pid}: the host gave no {name} pipe")
                self._log_handover(name)
                continue
            self._spawn(
                self._relay_output,
                (process, name, source, sink),
                f"hcsoci-cmd-{pid}-{name}",
                True,
            )
        self._relay_finished()  # the guard taken below

    def _spawn(
        self, target: Callable[..., None], args: tuple[Any, ...], name: str, waited: bool
    ) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        if waited:
            with self._lock:
                self._relays_running += 1
        try:
            thread.start()
        except BaseException:
            if waited:
                with self._lock:
                    self._relays_running -= 1
            raise
        if waited:
            self._relays.append(thread)

    def _relay_stdin(self, process: Process, pipe: Any) -> None:
        assert self.stdin is not None
        try:
            self._copy_and_log(pipe, self.stdin, "stdin")
        except BrokenPipeError:
            pass  # the process stopped reading its input: its business
        except Exception as err:
            self._stdin_error = err
        try:
            process.close_stdin(background())
        except Exception as err:  # the process may be closed already
            (self.log or _log).debug("closing stdin failed: %s", err)

    def _log_handover(self, name: str) -> None:
        (self.log or _log).debug(
            "command copy complete: %s, handed over",
            name,
            extra={"file": name, "handed_over": True},
        )

    def _relay_output(self, process: Process, name: str, source: Any, sink: relay.Writer) -> None:
        progress = relay.Progress()
        try:
            self._copy_and_log(sink, source, name, progress)
        except Exception as err:
            if progress.sink_failed:
                self._end_writer(process, name, source)
            if not (progress.sink_failed and isinstance(err, BrokenPipeError)):
                with self._lock:
                    if self._io_error is None:
                        self._io_error = err
        finally:
            self._relay_finished()

    def _end_writer(self, process: Process, name: str, source: Any) -> None:
        """The sink of ``name`` failed: end the process as a broken pipe would.

        SIGPIPE (SIGKILL when it cannot be sent, or when the process still runs
        :data:`SIGPIPE_GRACE` seconds later); meanwhile the rest of its output is
        read and dropped, so that it never blocks on a full pipe.  Closing the
        process (a cut) ends that drain.
        """
        log = self.log or _log
        try:
            process.signal(background(), signal.SIGPIPE)
        except Exception as err:
            log.debug("SIGPIPE after the %s sink failed: %s; killing", name, err)
            self._kill_writer(process, name)
        # A process may handle SIGPIPE (or not get it: a pid namespace's init
        # without a handler): it gets SIGPIPE_GRACE seconds to end by itself.
        timer = threading.Timer(SIGPIPE_GRACE, self._kill_writer, (process, name))
        timer.name = f"hcsoci-cmd-{process.pid()}-{name}-sigpipe"
        timer.daemon = True
        timer.start()
        try:
            relay.copy(_Discard(), source)
        except Exception as err:  # cut, or the stream broke: nothing more to drop
            log.debug("dropping the rest of %s ended: %s", name, err)
        finally:
            timer.cancel()
            timer.join()

    def _kill_writer(self, process: Process, name: str) -> None:
        try:
            process.kill(background())
        except Exception as err:  # gone or closed meanwhile
            (self.log or _log).debug("kill after the %s sink failed: %s", name, err)

    def _relay_finished(self) -> None:
        with self._lock:
            self._relays_running -= 1
            if self._relays_running == 0 and self._relays_done is not None:
                self._relays_done.set()

    def _copy_and_log(
        self,
        dst: relay.Writer,
        src: relay.Reader,
        name: str,
        progress: relay.Progress | None = None,
    ) -> None:
        log = self.log or _log
        progress = progress if progress is not None else relay.Progress()
        try:
            relay.copy(dst, src, progress)
        except Exception as err:
            # A reader that went away is routine; any other failure is an error.
            level = logging.DEBUG if isinstance(err, BrokenPipeError) else logging.ERROR
            log.log(
                level,
                "command copy complete: %s, %d bytes, %s",
                name,
                progress.bytes,
                err,
                extra={"file": name, "bytes": progress.bytes, "error": str(err)},
            )
            raise
        log.debug(
            "command copy complete: %s, %d bytes",
            name,
            progress.bytes,
            extra={"file": name, "bytes": progress.bytes},
        )

    def _finish_relays(self, process: Process) -> bool:
        """Join the output relays, cutting them after copy_after_exit_timeout or once
        the context is done.  True if they had to be cut."""
        relays_done = self._relays_done
        if relays_done is None:
            return False
        timeout = self.copy_after_exit_timeout
        stop_waking = None
        if self.context is not None:
            stop_waking = self.context.after_done(relays_done.set)
        try:
            relays_done.wait(timeout if timeout > 0 else None)
        finally:
            if stop_waking is not None:
                stop_waking()
        with self._lock:
            stuck = self._relays_running > 0
        if stuck:
            # Closing the process cancels pending reads of its stdout and stderr.
            process.close()
            (self.log or _log).warning("timed out waiting for stdio relay")
        for thread in self._relays:
            thread.join()
        return stuck

    def _kill_on_done(self) -> None:
        process = self.process
        if process is None:
            return
        try:
            process.kill(background())
        except Exception as err:  # it may have exited and been closed meanwhile
            (self.log or _log).debug("kill on context done failed: %s", err)

    def _abandon(self, process: Process) -> None:
        """Undo a half-done start: no process, relay or descriptor may be left."""
        if self._stop_watching is not None:
            self._stop_watching()
        try:
            process.kill(background())
            process.wait()
        finally:
            process.close()
            for thread in self._relays:
                thread.join()
            self.process = None

    def __repr__(self) -> str:
        args = self.spec.args if self.spec is not None else None
        return f"<Cmd {args!r} process={self.process!r} {self.exit_state!r}>"

    # -- context manager: as subprocess.Popen, `with` cannot forget the process --

    def __enter__(self) -> Cmd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A started command not waited for yet is killed, then waited for.

        Its exit status is in :attr:`exit_state`; the ``ExitError`` (or relay
        error) that :meth:`wait` would raise is not raised here.
        """
        if self.process is None or self._waited:
            return
        with contextlib.suppress(HcsociError):
            self.process.kill(background())
        with contextlib.suppress(ExitError, ClosedPipeError, OSError, HcsociError):
            self.wait()

    def __del__(self) -> None:
        if getattr(self, "process", None) is not None and not getattr(self, "_waited", True):
            warnings.warn(
                f"Cmd {self!r}: dropped while its process may run; wait() releases it",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )


def command(host: ProcessHost, name: str, *args: str) -> Cmd:
    """A :class:`Cmd` for ``name`` and ``args`` in ``host``.

    A Linux host gets working directory ``/`` and :data:`DEFAULT_PATH`.
    """
    spec = oci.Process(args=[name, *args])
    if host.os() == "windows":
        spec.cwd = "C:\\"
    else:
        spec.cwd = "/"
        spec.env = [f"PATH={DEFAULT_PATH}"]
    return Cmd(host, spec)


def command_context(ctx: Context, host: ProcessHost, name: str, *args: str) -> Cmd:
    """Like :func:`command`; the process is killed when ``ctx`` becomes done."""
    cmd = command(host, name, *args)
    cmd.context = ctx
    return cmd


def process_parameters(
    spec: oci.Process,
    *,
    stdin: bool = False,
    stdout: bool = False,
    stderr: bool = False,
    stdio_fds: StdioFds = NO_FDS,
) -> ProcessParameters:
    """Translate an OCI process for a non-OCI host (hcsshim's ``ProcessParameters``).

    Environment entries with an empty value are dropped; ``user`` is the
    spec's username, else ``uid:gid`` unless both are 0 (the caller's own);
    ``stdin``/``stdout``/``stderr`` say which pipes to create; ``stdio_fds``
    are descriptors offered instead (see :mod:`hcsoci.cow`).
    """
    if spec.command_line:
        raise InvalidArgumentError(
            f"spec.command_line {spec.command_line!r}: a Windows command line; use spec.args"
        )
    if not spec.args:
        raise InvalidArgumentError(f"spec.args {spec.args!r}: empty, nothing to run")
    environment: dict[str, str] = {}
    for entry in spec.env or ():
        key, sep, value = entry.partition("=")
        if sep and value:
            environment[key] = value
    user = spec.user.username
    if not user and (spec.user.uid or spec.user.gid):
        user = f"{spec.user.uid}:{spec.user.gid}"
    size = spec.console_size
    return ProcessParameters(
        command_args=list(spec.args),
        environment=environment,
        working_directory=spec.cwd,
        user=user,
        emulate_console=spec.terminal,
        console_size=(size.height, size.width) if size is not None else (0, 0),
        create_stdin_pipe=stdin,
        create_stdout_pipe=stdout,
        create_stderr_pipe=stderr,
        stdio_fds=stdio_fds,
    )


class _Discard(io.RawIOBase):
    """A sink that takes everything and keeps nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


def _check_stream(field: str, stream: object, operation: str) -> None:
    """Refuse a stream that cannot do ``operation`` ("read" or "write"), naming it."""
    if stream is None:
        return
    if isinstance(stream, io.TextIOBase):
        raise InvalidArgumentError(
            f"{field} {stream!r}: a text stream; give a binary one (such as its .buffer)"
        )
    reading = operation == "read"
    methods = ("read", "readinto") if reading else ("write",)
    if not any(callable(getattr(stream, method, None)) for method in methods):
        raise InvalidArgumentError(f"{field} {stream!r}: has no {operation}() method")
    check = getattr(stream, "readable" if reading else "writable", None)
    if callable(check):
        try:
            able = check()
        except ValueError as err:  # closed
            raise InvalidArgumentError(f"{field} {stream!r}: {err}") from None
        if not able:
            raise InvalidArgumentError(
                f"{field} {stream!r}: not open for {'reading' if reading else 'writing'}"
            )
