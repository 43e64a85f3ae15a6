"""Cmd on real local processes: hcsshim's cmd_test.go cases, and more."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import pytest

from hcsoci import (
    ClosedPipeError,
    Cmd,
    ExitError,
    ExitState,
    LocalHost,
    NotFoundError,
    ProcessParameters,
    command,
    command_context,
    context,
    cow,
    oci,
)
from hcsoci.cmd import DEFAULT_PATH, process_parameters
from hcsoci.context import background
from hcsoci.errors import InvalidArgumentError, StateError

pytestmark = pytest.mark.usefixtures("no_leaks")


# --- hcsshim's cmd_test.go, on Linux -------------------------------------------------


def test_cmd_exit_code(host: LocalHost) -> None:
    cmd = command(host, "sh", "-c", "exit 64")
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 64
    assert str(raised.value) == "process exited with exit code 64"
    assert cmd.exit_state.exit_code == 64


def test_cmd_output(host: LocalHost) -> None:
    assert command(host, "echo", "hello").output() == b"hello\n"


def test_cmd_context(host: LocalHost) -> None:
    ctx, cancel = context.with_timeout(background(), 0.25)
    reader, writer = os.pipe()
    try:
        cmd = command_context(ctx, host, "cat")  # blocked on a stdin that never ends
        cmd.stdin = io.FileIO(reader, "rb", closefd=False)
        cmd.start()
        assert cmd.process is not None
        cmd.process.wait()
        os.close(writer)
        writer = -1
        with pytest.raises(ExitError) as raised:
            cmd.wait()
        assert raised.value.exit_code == 128 + signal.SIGKILL
        assert isinstance(ctx.err(), context.DeadlineExceeded)
    finally:
        cancel()
        os.close(reader)
        if writer >= 0:
            os.close(writer)


def test_cmd_stdin(host: LocalHost) -> None:
    cmd = command(host, "cat")
    cmd.stdin = io.BytesIO(b"testing 1 2 3")
    assert cmd.output() == b"testing 1 2 3"


def test_cmd_stdin_blocked(host: LocalHost) -> None:
    # The caller's reader gives one line and then blocks: wait() must not care.
    reader, writer = os.pipe()
    try:
        os.write(writer, b"\n")
        cmd = command(host, "sh", "-c", "read line")
        cmd.stdin = io.FileIO(reader, "rb", closefd=False)
        assert cmd.output() == b""
    finally:
        os.close(writer)  # now the stdin relay reads EOF and ends (no_leaks checks)
    thread_gone = _wait_for(lambda: not _threads_named("-stdin"))
    os.close(reader)
    assert thread_gone


class _StuckIoHost:
    """hcsshim's stuckIoProcessHost: the host "forgets" to close the stdio of an
    exited process.  A real LocalHost cannot be made to do that, so this wrapper
    hands out pipes of its own that only its close() ends."""

    def __init__(self, host: cow.ProcessHost) -> None:
        self.host = host

    def os(self) -> str:
        return self.host.os()

    def is_oci(self) -> bool:
        return self.host.is_oci()

    def create_process(self, ctx: context.Context, config: Any) -> cow.Process:
        return _StuckIoProcess(self.host.create_process(ctx, config))


class _StuckIoProcess:
    def __init__(self, process: cow.Process) -> None:
        self.process = process
        self.ends = [os.pipe() for _ in range(3)]
        stdin, stdout, stderr = self.ends
        self.files = (
            io.FileIO(stdin[1], "wb"),
            io.FileIO(stdout[0], "rb"),
            io.FileIO(stderr[0], "rb"),
        )
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.process, name)

    def stdio(self) -> cow.Stdio:
        return self.files

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.ends[0][0])  # the far ends: the relays see EOF / EPIPE
            os.close(self.ends[1][1])
            os.close(self.ends[2][1])
            for file in self.files:
                file.close()
        self.process.close()


def test_cmd_stuck_io(host: LocalHost) -> None:
    cmd = command(_StuckIoHost(host), "echo", "hello")
    cmd.copy_after_exit_timeout = 0.2
    with pytest.raises(ClosedPipeError):
        cmd.output()


# --- stuck relays on real processes ------------------------------------------------


def test_copy_after_exit_timeout_cuts_a_grandchild_held_pipe(
    host: LocalHost, token: str, kill_tagged: Callable[[str], None], caplog: Any
) -> None:
    cmd = command(host, "sh", "-c", f"HCSOCI_TAG={token} sleep 30 & echo hello")
    cmd.copy_after_exit_timeout = 0.2
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="hcsoci.cmd"),
            pytest.raises(ClosedPipeError) as raised,
        ):
            cmd.output()
    finally:
        kill_tagged(token)
    assert raised.value.output == b"hello\n"  # what came before the cut is kept
    assert cmd.exit_state.exit_code == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "timed out waiting for stdio relay" in messages
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].file == "stdout" and errors[0].bytes == 6


def test_done_context_cuts_stuck_relays_without_a_copy_timeout(
    host: LocalHost, token: str, kill_tagged: Callable[[str], None]
) -> None:
    ctx, cancel = context.with_timeout(background(), 0.3)
    cmd = command_context(ctx, host, "sh", "-c", f"HCSOCI_TAG={token} sleep 30 & echo hi")
    try:
        with pytest.raises(ClosedPipeError):
            cmd.output()  # no copy_after_exit_timeout: only the context ends the wait
    finally:
        cancel()
        kill_tagged(token)


# --- the rest of the semantics -----------------------------------------------------


def test_command_defaults(host: LocalHost) -> None:
    cmd = command(host, "env")
    assert cmd.spec is not None
    assert cmd.spec.args == ["env"]
    assert cmd.spec.cwd == "/"
    assert cmd.spec.env == [f"PATH={DEFAULT_PATH}"]
    assert cmd.context is None and cmd.process is None
    assert cmd.exit_state.exit_code == -1
    assert cmd.output() == f"PATH={DEFAULT_PATH}\n".encode()
    assert command(host, "pwd").output() == b"/\n"
    ctx, cancel = context.with_cancel(background())
    assert command_context(ctx, host, "true").context is ctx
    cancel()


def test_start_refuses_a_done_context(host: LocalHost) -> None:
    ctx, cancel = context.with_cancel(background())
    cancel()
    cmd = command_context(ctx, host, "true")
    with pytest.raises(context.Canceled):
        cmd.start()
    assert cmd.process is None


def test_context_cancel_kills_and_a_finished_command_stops_watching(host: LocalHost) -> None:
    ctx, cancel = context.with_cancel(background())
    cmd = command_context(ctx, host, "sleep", "60")
    cmd.start()
    cancel()
    with pytest.raises(ExitError) as raised:
        cmd.wait()
    assert raised.value.exit_code == 128 + signal.SIGKILL

    ctx, cancel = context.with_cancel(background())
    command_context(ctx, host, "true").run()
    assert ctx._callbacks == {}  # nothing registered any more
    cancel()


def test_wait_once_and_in_order(host: LocalHost) -> None:
    cmd = command(host, "true")
    with pytest.raises(StateError, match="not started"):
        cmd.wait()
    cmd.run()
    with pytest.raises(StateError, match="already called"):
        cmd.wait()
    with pytest.raises(StateError, match="already started"):
        cmd.start()


def test_output_keeps_what_was_captured_on_exit_error(host: LocalHost) -> None:
    with pytest.raises(ExitError) as raised:
        command(host, "sh", "-c", "echo partial; exit 3").output()
    assert raised.value.output == b"partial\n"
    cmd = command(host, "true")
    cmd.stdout = io.BytesIO()
    with pytest.raises(InvalidArgumentError, match=r"stdout .* already set"):
        cmd.output()


def test_exit_state() -> None:
    assert ExitState().exit_code == -1
    assert ExitState(True, 3).exit_code == 3
    error = ExitError(ExitState(True, 130))
    assert error.exit_code == 130 and error.exit_state.exited


def test_signals_through_the_process(host: LocalHost) -> None:
    script = "echo ready; exec sleep 60"
    reader, writer = os.pipe()
    cmd = command(host, "sh", "-c", script)
    cmd.stdout = io.FileIO(writer, "wb")
    try:
        cmd.start()
        assert os.read(reader, 6) == b"ready\n"
        assert cmd.process is not None
        assert cmd.process.signal(background(), signal.SIGTERM) is True
        with pytest.raises(ExitError) as raised:
            cmd.wait()
        assert raised.value.exit_code == 128 + signal.SIGTERM
    finally:
        cmd.stdout.close()
        os.close(reader)


def test_terminal_and_resize(host: LocalHost) -> None:
    cmd = command(host, "sh", "-c", "stty size; read x; stty size")
    assert cmd.spec is not None
    cmd.spec.terminal = True
    cmd.spec.console_size = oci.Box(height=24, width=80)
    in_reader, in_writer = os.pipe()
    out_reader, out_writer = os.pipe()
    cmd.stdin = io.FileIO(in_reader, "rb")
    cmd.stdout = io.FileIO(out_writer, "wb")
    try:
        cmd.start()
        assert cmd.process is not None
        assert _read_until(out_reader, b"24 80\r\n").endswith(b"24 80\r\n")
        cmd.process.resize_console(background(), 132, 50)
        os.write(in_writer, b"\n")
        os.close(in_writer)
        in_writer = -1
        cmd.wait()
        assert _read_until(out_reader, b"50 132\r\n").endswith(b"50 132\r\n")
    finally:
        cmd.stdout.close()
        os.close(out_reader)
        if in_writer >= 0:
            os.close(in_writer)


def _read_until(fd: int, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def test_copy_complete_log_records(host: LocalHost, caplog: pytest.LogCaptureFixture) -> None:
    cmd = command(host, "sh", "-c", "cat; echo err >&2")
    cmd.stdin = io.BytesIO(b"12345")
    cmd.stderr = io.BytesIO()
    with caplog.at_level(logging.DEBUG, logger="hcsoci.cmd"):
        assert cmd.output() == b"12345"
    assert cmd.process is not None
    done = {
        r.file: r  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("command copy complete")
    }
    assert set(done) == {"stdin", "stdout", "stderr"}
    assert done["stdout"].bytes == 5 and done["stderr"].bytes == 4  # type: ignore[attr-defined]
    assert done["stdin"].bytes == 5  # type: ignore[attr-defined]
    assert all(r.levelno == logging.DEBUG for r in done.values())
    assert done["stdout"].pid == cmd.process.pid()  # type: ignore[attr-defined]


def test_log_adapter_fields_are_kept(host: LocalHost, caplog: pytest.LogCaptureFixture) -> None:
    cmd = command(host, "echo", "x")
    cmd.log = logging.LoggerAdapter(logging.getLogger("hcsoci.test.cmd"), {"container": "c1"})
    with caplog.at_level(logging.DEBUG, logger="hcsoci.test.cmd"):
        cmd.output()
    records = [r for r in caplog.records if r.name == "hcsoci.test.cmd"]
    assert records
    assert all(r.pid == cmd.process.pid() and r.container == "c1" for r in records)  # type: ignore[attr-defined, union-attr]


class _FailingWriter(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(28, "No space left on device (simulated)")


def test_io_error_surfaces_only_when_the_exit_was_clean(host: LocalHost) -> None:
    # A failing sink gets the writer SIGPIPE; one that ignores it exits cleanly,
    # and then the sink's error is what wait() reports.
    cmd = command(host, "sh", "-c", "trap '' PIPE; echo hello; sleep 0.2")
    cmd.stdout = _FailingWriter()
    with pytest.raises(OSError, match="simulated"):
        cmd.run()
    cmd = command(host, "sh", "-c", "trap '' PIPE; echo hello; sleep 0.2; exit 5")
    cmd.stdout = _FailingWriter()
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 5


class _GoneReader(io.RawIOBase):
    """A sink whose reader went away: every write fails with EPIPE."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_a_relayed_sink_that_breaks_ends_the_writer_with_sigpipe(host: LocalHost) -> None:
    cmd = command(host, "yes")  # would write forever
    cmd.stdout = _GoneReader()
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 128 + signal.SIGPIPE
    # A writer that handles SIGPIPE decides its own exit; the EPIPE is no error of ours.
    cmd = command(host, "sh", "-c", "trap 'exit 3' PIPE; while :; do echo y; done")
    cmd.stdout = _GoneReader()
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 3
    cmd = command(host, "sh", "-c", "trap '' PIPE; echo y; sleep 0.2")
    cmd.stdout = _GoneReader()
    cmd.run()  # exit 0: the reader's going away is not an error


class _FailingReader(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise OSError(5, "Input/output error (simulated)")


def test_stdin_error_is_reported_when_nothing_else_failed(host: LocalHost) -> None:
    cmd = command(host, "cat")
    cmd.stdin = _FailingReader()
    with pytest.raises(OSError, match="simulated"):
        cmd.output()


def test_a_process_that_stops_reading_stdin_is_not_an_error(host: LocalHost) -> None:
    cmd = command(host, "head", "-c", "1")
    cmd.stdin = io.BytesIO(b"x" * (8 << 20))
    assert cmd.output() == b"x"


def test_bad_streams_are_refused_before_anything_starts(host: LocalHost) -> None:
    with (
        tempfile.NamedTemporaryFile(prefix="hcsoci-t-") as file,
        open(file.name, "rb") as read_only,
        open(file.name, "ab") as write_only,
    ):
        cases: list[tuple[str, Any, str]] = [
            ("stdin", b"bytes", "stdin b'bytes': has no read\\(\\) method"),
            ("stdout", "text", "stdout 'text': has no write\\(\\) method"),
            ("stdout", read_only, "stdout .*: not open for writing"),
            ("stderr", object(), "stderr <object .*>: has no write\\(\\) method"),
            ("stderr", sys.stderr, "stderr .*: a text stream"),
            ("stdin", write_only, "stdin .*: not open for reading"),
        ]
        for field, stream, message in cases:
            cmd = command(host, "true")
            setattr(cmd, field, stream)
            with pytest.raises(InvalidArgumentError, match=message):
                cmd.start()
            assert cmd.process is None
        closed = io.BytesIO()
        closed.close()
        cmd = command(host, "true")
        cmd.stdout = closed
        with pytest.raises(InvalidArgumentError, match="closed"):
            cmd.start()


def test_bad_input_through_cmd_leaves_nothing_open(host: LocalHost) -> None:
    cases: list[tuple[Callable[[Cmd], None], type[Exception], str]] = [
        (lambda c: None, NotFoundError, "command_args\\[0\\] 'hcsoci-missing'"),
        (lambda c: setattr(c.spec, "cwd", "/nonexistent"), NotFoundError, "working_directory"),
        (lambda c: setattr(_spec(c).user, "username", "hcsoci-x"), NotFoundError, "user"),
        (lambda c: setattr(c.spec, "args", []), InvalidArgumentError, "spec.args"),
        (lambda c: setattr(c.spec, "command_line", "a b"), InvalidArgumentError, "command_line"),
    ]
    for change, error, message in cases:
        cmd = command(host, "hcsoci-missing" if "command_args" in message else "true")
        change(cmd)
        cmd.stdin, cmd.stdout, cmd.stderr = io.BytesIO(b"x"), io.BytesIO(), io.BytesIO()
        with pytest.raises(error, match=message):
            cmd.start()
        assert cmd.process is None
    with pytest.raises(InvalidArgumentError, match="spec: None"):
        Cmd(host).start()


def _spec(cmd: Cmd) -> oci.Process:
    assert cmd.spec is not None
    return cmd.spec


def test_process_parameters_translation() -> None:
    spec = oci.Process(
        args=["prog", "a b"],
        env=["A=1", "EMPTY=", "NOEQUALS", "B=x=y", "A=2"],
        cwd="/srv",
        terminal=True,
        console_size=oci.Box(height=30, width=100),
        user=oci.User(uid=7, gid=8, username="daemon"),
    )
    params = process_parameters(spec, stdin=True, stderr=True)
    assert params == ProcessParameters(
        command_args=["prog", "a b"],
        environment={"A": "2", "B": "x=y"},
        working_directory="/srv",
        user="daemon",
        emulate_console=True,
        console_size=(30, 100),
        create_stdin_pipe=True,
        create_stdout_pipe=False,
        create_stderr_pipe=True,
    )
    assert process_parameters(oci.Process(args=["x"], user=oci.User(uid=7, gid=8))).user == "7:8"
    assert process_parameters(oci.Process(args=["x"])).user == ""
    assert process_parameters(oci.Process(args=["x"])).console_size == (0, 0)


class _OciLocalHost:
    """An OCI host made of LocalHost: takes the OCI process parameters and, unlike
    a container, always creates all three pipes (a careless host)."""

    def __init__(self) -> None:
        self.configs: list[Any] = []

    def os(self) -> str:
        return "linux"

    def is_oci(self) -> bool:
        return True

    def create_process(self, ctx: context.Context, config: Any) -> cow.Process:
        self.configs.append(config)
        assert isinstance(config, cow.OCIProcessParameters)
        assert config.process is not None
        params = process_parameters(config.process, stdin=True, stdout=True, stderr=True)
        return LocalHost().create_process(ctx, params)


def test_oci_host_gets_the_spec_and_unasked_stdin_is_closed() -> None:
    host = _OciLocalHost()
    cmd = command(host, "cat")  # would wait forever on an open stdin
    assert cmd.output() == b""
    assert host.configs == [
        cow.OCIProcessParameters(
            process=cmd.spec,
            create_stdin_pipe=False,
            create_stdout_pipe=True,
            create_stderr_pipe=False,
        )
    ]


def test_64_mib_through_stdout_and_stderr_at_once(host: LocalHost) -> None:
    size = 64 << 20
    with tempfile.TemporaryDirectory(prefix="hcsoci-t-") as tmp:
        source = os.path.join(tmp, "source")
        data = os.urandom(size)
        with open(source, "wb") as f:
            f.write(data)
        expected = hashlib.sha256(data).hexdigest()
        del data
        script = 'cat "$0" & cat "$0" >&2; wait'
        # stdout through Python into memory, stderr spliced into a file.
        with open(os.path.join(tmp, "stderr"), "wb") as stderr:
            cmd = command(host, "sh", "-c", script, source)
            cmd.stderr = stderr
            output = cmd.output()
        assert len(output) == size
        assert hashlib.sha256(output).hexdigest() == expected
        del output
        with open(os.path.join(tmp, "stderr"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == expected


def test_300_runs_leave_nothing_behind(host: LocalHost) -> None:
    # (no_leaks compares descriptors, threads and children with the start)
    for i in range(300):
        if i % 3 == 0:
            command(host, "true").run()
        elif i % 3 == 1:
            assert command(host, "echo", str(i)).output() == f"{i}\n".encode()
        else:
            cmd = command(host, "sh", "-c", "cat; echo e >&2; exit 1")
            cmd.stdin, cmd.stderr = io.BytesIO(b"in"), io.BytesIO()
            with pytest.raises(ExitError) as raised:
                cmd.output()
            assert raised.value.output == b"in"


def test_64_commands_at_once_from_threads(host: LocalHost) -> None:
    start = threading.Barrier(64)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            start.wait()
            cmd = command(host, "sh", "-c", 'cat; echo "$0"', str(i))
            cmd.stdin = io.BytesIO(b"in-%d:" % i)
            results[i] = cmd.output()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == {i: b"in-%d:%d\n" % (i, i) for i in range(64)}


def test_relays_use_real_descriptors_without_python_copies(
    host: LocalHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's pipe that cannot be handed over (non-blocking) is relayed by splice:
    no byte enters Python."""
    calls: list[int] = []
    real_splice = os.splice

    def counting_splice(*args: Any, **kwargs: Any) -> int:
        moved = real_splice(*args, **kwargs)
        calls.append(moved)
        return moved

    monkeypatch.setattr(os, "splice", counting_splice)
    read_end, write_end = os.pipe()
    received: list[int] = []

    def drain() -> None:
        with io.FileIO(read_end, "rb") as pipe:
            received.append(len(pipe.readall()))

    drainer = threading.Thread(target=drain)
    drainer.start()
    os.set_blocking(write_end, False)  # the child would see EAGAIN: not handed over
    with io.FileIO(write_end, "wb") as sink:
        cmd = command(host, "head", "-c", "1000000", "/dev/zero")
        cmd.stdout = sink
        cmd.run()
    drainer.join()
    assert received == [1_000_000]
    assert sum(calls) == 1_000_000


def _threads_named(suffix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith(suffix)]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        event.wait(0.01)
    return condition()


def test_a_real_descriptor_is_handed_to_the_process(
    host: LocalHost, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A file as stdout/stderr and a pipe as stdin become the process's own: no relay."""
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    read_end, write_end = os.pipe()
    os.write(write_end, b"from the pipe\n")
    os.close(write_end)
    data = os.urandom(1 << 20)
    data_file = tmp_path / "data"
    data_file.write_bytes(data)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        out.write(b"buffered first:")  # flushed before the process writes
        cmd = command(host, "sh", "-c", f"cat; cat {data_file} >&2")
        cmd.stdin, cmd.stdout, cmd.stderr = io.FileIO(read_end, "rb"), out, err
        with caplog.at_level(logging.DEBUG, logger="hcsoci.cmd"):
            cmd.run()
        cmd.stdin.close()
    assert out_path.read_bytes() == b"buffered first:from the pipe\n"
    assert err_path.read_bytes() == data
    handed = sorted(
        r.__dict__["file"] for r in caplog.records if r.__dict__.get("handed_over") is True
    )
    assert handed == ["stderr", "stdin", "stdout"]
    assert not [r for r in caplog.records if "bytes" in r.__dict__]  # no relay ran
