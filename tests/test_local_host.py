"""LocalHost and LocalProcess: the cow protocols on real processes of this machine."""

from __future__ import annotations

import os
import select
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from hcsoci import HcsociError, LocalHost, NotFoundError, ProcessParameters, cow
from hcsoci.context import background
from hcsoci.errors import InvalidArgumentError, StateError
from hcsoci.local import LocalProcess, resolve_user

PATH = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

pytestmark = pytest.mark.usefixtures("no_leaks")


@contextmanager
def started(host: LocalHost, *args: str, **params: object) -> Iterator[LocalProcess]:
    """A started process; killed, reaped and closed at the end whatever happens."""
    config = ProcessParameters(command_args=list(args), environment=dict(PATH))
    for key, value in params.items():
        setattr(config, key, value)
    process = host.create_process(background(), config)
    try:
        yield process
    finally:
        try:
            process.kill(background())
        except StateError:  # closed by the test: the pid is still ours until reaped
            os.kill(process.pid(), signal.SIGKILL)
        process.wait()
        process.close()


def read_all(stream: IO[bytes] | None) -> bytes:
    assert stream is not None
    chunks = []
    while chunk := stream.read(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run(host: LocalHost, *args: str, **params: object) -> tuple[bytes, int]:
    """Run to completion with a stdout pipe: (stdout, exit code)."""
    params.setdefault("create_stdout_pipe", True)
    with started(host, *args, **params) as process:
        output = read_all(process.stdio()[1])
        process.wait()
        return output, process.exit_code()


def test_host_identity(host: LocalHost) -> None:
    assert host.os() == "linux"
    assert host.is_oci() is False
    assert isinstance(host, cow.ProcessHost)
    with started(host, "true") as process:
        assert isinstance(process, cow.Process)


def test_pipes_only_for_the_streams_asked_for(host: LocalHost) -> None:
    with started(host, "true") as process:
        assert process.stdio() == (None, None, None)
    with started(host, "true", create_stderr_pipe=True) as process:
        stdin, stdout, stderr = process.stdio()
        assert stdin is None and stdout is None and stderr is not None
    # The others are /dev/null.
    output, code = run(host, "sh", "-c", "readlink /proc/self/fd/0 /proc/self/fd/2")
    assert (output, code) == (b"/dev/null\n/dev/null\n", 0)


def test_stdin_and_close_stdin(host: LocalHost) -> None:
    with started(host, "cat", create_stdin_pipe=True, create_stdout_pipe=True) as process:
        stdin, stdout, _ = process.stdio()
        assert stdin is not None and stdout is not None
        stdin.write(b"through cat\n")
        process.close_stdin(background())
        assert read_all(stdout) == b"through cat\n"
        process.wait()
        assert process.exit_code() == 0


def test_stderr_pipe(host: LocalHost) -> None:
    with started(host, "sh", "-c", "echo out; echo err >&2", create_stderr_pipe=True) as process:
        assert read_all(process.stdio()[2]) == b"err\n"


def test_environment_is_exactly_the_map(host: LocalHost) -> None:
    env = {"PATH": "/usr/bin:/bin", "HCSOCI_A": "1", "HCSOCI_B": "x=y"}
    output, _ = run(host, "env", environment=env)
    assert sorted(output.decode().splitlines()) == sorted(f"{k}={v}" for k, v in env.items())
    output, _ = run(host, "/usr/bin/env", environment={})
    assert output == b""


def test_working_directory(host: LocalHost) -> None:
    with tempfile.TemporaryDirectory(prefix="hcsoci-t-") as tmp:
        output, _ = run(host, "pwd", working_directory=tmp)
        assert output == tmp.encode() + b"\n"
        with open(os.path.join(tmp, "here.sh"), "w") as script:
            script.write("#!/bin/sh\necho relative\n")
        os.chmod(os.path.join(tmp, "here.sh"), 0o755)
        assert run(host, "./here.sh", working_directory=tmp) == (b"relative\n", 0)


def test_user_by_name_and_by_ids(host: LocalHost) -> None:
    output, _ = run(host, "sh", "-c", "id -u; id -g; id -G", user="nobody")
    nobody = resolve_user("nobody")
    assert nobody is not None
    assert output.decode().split() == [str(nobody[0]), str(nobody[1])] + [str(g) for g in nobody[2]]
    output, _ = run(host, "sh", "-c", "id -u; id -g; id -G", user="4321:8765")
    assert output.decode().split() == ["4321", "8765", "8765"]  # no supplementary groups
    output, _ = run(host, "id", "-u", user="0")
    assert output == b"0\n"
    output, _ = run(host, "id", "-g", user="nobody:root")
    assert output == b"0\n"


def test_resolve_user() -> None:
    assert resolve_user("") is None
    root = resolve_user("root")
    assert root is not None and root[:2] == (0, 0)
    assert resolve_user("12345") == (12345, 0, [])  # unknown uid: gid 0, like runc
    with pytest.raises(InvalidArgumentError, match="'1:'"):
        resolve_user("1:")
    with pytest.raises(InvalidArgumentError, match="out of range"):
        resolve_user("99999999999")
    with pytest.raises(NotFoundError, match="no group named 'nogroupx'"):
        resolve_user("root:nogroupx")


def test_unknown_user_is_refused_naming_it(host: LocalHost) -> None:
    with pytest.raises(NotFoundError, match="user 'hcsoci-nobody-x'") as raised:
        host.create_process(
            background(),
            ProcessParameters(
                command_args=["true"],
                environment=dict(PATH),
                user="hcsoci-nobody-x",
                create_stdout_pipe=True,
            ),
        )
    assert isinstance(raised.value, FileNotFoundError)


def test_bad_working_directory_is_refused_naming_it(host: LocalHost) -> None:
    with pytest.raises(NotFoundError, match="working_directory '/nonexistent/hcsoci'"):
        host.create_process(
            background(),
            ProcessParameters(
                command_args=["true"],
                working_directory="/nonexistent/hcsoci",
                create_stdin_pipe=True,
                create_stdout_pipe=True,
                create_stderr_pipe=True,
            ),
        )


def test_missing_executable_is_refused_naming_it(host: LocalHost) -> None:
    for name in ("hcsoci-no-such-command", "/usr/bin/hcsoci-no-such-command"):
        with pytest.raises(NotFoundError, match=f"command_args\\[0\\] '{name}'"):
            host.create_process(
                background(),
                ProcessParameters(
                    command_args=[name], environment=dict(PATH), create_stdout_pipe=True
                ),
            )
    with pytest.raises(NotFoundError, match="executable not found"):
        host.create_process(
            background(),
            ProcessParameters(command_args=["sh"], environment={"PATH": "/nonexistent"}),
        )


def test_not_executable_is_refused(host: LocalHost) -> None:
    with (
        tempfile.NamedTemporaryFile(prefix="hcsoci-t-") as plain,
        pytest.raises(InvalidArgumentError, match=plain.name),
    ):
        host.create_process(background(), ProcessParameters(command_args=[plain.name]))
    with pytest.raises(InvalidArgumentError, match="command_args\\[0\\] '/tmp'"):
        host.create_process(background(), ProcessParameters(command_args=["/tmp"]))


def test_other_bad_parameters(host: LocalHost) -> None:
    cases: list[tuple[object, str]] = [
        (ProcessParameters(), "command_args: empty"),
        (ProcessParameters(command_args=["true", "a\0b"]), "command_args\\[1\\]"),
        (ProcessParameters(command_args=["true"], environment={"A=B": "1"}), "environment key"),
        (ProcessParameters(command_args=["true"], environment={"A": "\0"}), "environment\\["),
        (
            ProcessParameters(command_args=["true"], emulate_console=True, console_size=(-1, 5)),
            "console_size",
        ),
        ("true", "LocalHost takes ProcessParameters"),
    ]
    for config, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            host.create_process(background(), config)


def test_done_context_is_refused(host: LocalHost) -> None:
    from hcsoci import context

    ctx, cancel = context.with_cancel(background())
    cancel()
    with pytest.raises(context.Canceled):
        host.create_process(ctx, ProcessParameters(command_args=["true"]))


def test_exit_code_raises_while_running_then_reports(host: LocalHost) -> None:
    with started(host, "sh", "-c", "read x; exit 7", create_stdin_pipe=True) as process:
        with pytest.raises(StateError, match="still running"):
            process.exit_code()
        process.close_stdin(background())
        process.wait()
        process.wait()  # again: fine
        assert process.exit_code() == 7


def test_kill_and_signals(host: LocalHost) -> None:
    with started(host, "sleep", "60") as process:
        assert process.kill(background()) is True
        process.wait()
        assert process.exit_code() == 128 + signal.SIGKILL
        assert process.kill(background()) is False
        assert process.signal(background(), signal.SIGTERM) is False
    with started(host, "sleep", "60") as process:
        assert process.signal(background(), signal.SIGTERM) is True
        process.wait()
        assert process.exit_code() == 128 + signal.SIGTERM
    # A handled signal is delivered and the process decides.
    script = "trap 'exit 42' USR1; echo ready; while :; do sleep 0.05; done"
    with started(host, "sh", "-c", script, create_stdout_pipe=True) as process:
        stdout = process.stdio()[1]
        assert stdout is not None and stdout.read(6) == b"ready\n"
        assert process.signal(background(), signal.SIGUSR1) is True
        process.wait()
        assert process.exit_code() == 42


def test_signal_after_exit_before_wait_is_not_delivered(host: LocalHost) -> None:
    with started(host, "true") as process:
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/proc/{process.pid()}") or _state(process.pid()) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert process.kill(background()) is False  # exited (a zombie): nobody to signal
        assert process.exit_code() == 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_invalid_signal(host: LocalHost) -> None:
    with started(host, "sleep", "60") as process, pytest.raises(InvalidArgumentError):
        process.signal(background(), 12345)


def test_console_size_tty_and_controlling_terminal(host: LocalHost) -> None:
    script = "stty size; tty; exec 3</dev/tty && echo has-ctty; echo $$ $(ps -o sid= -p $$)"
    output, code = run(host, "sh", "-c", script, emulate_console=True, console_size=(24, 80))
    lines = output.decode().split("\r\n")
    assert code == 0
    assert lines[0] == "24 80"
    assert lines[1].startswith("/dev/pts/")
    assert lines[2] == "has-ctty"
    pid, sid = lines[3].split()
    assert pid == sid  # a session leader


def test_resize_console_delivers_sigwinch(host: LocalHost) -> None:
    script = "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"
    options = {"emulate_console": True, "console_size": (10, 20), "create_stdout_pipe": True}
    with started(host, "sh", "-c", script, **options) as process:
        stdout = process.stdio()[1]
        assert stdout is not None
        assert stdout.read(7) == b"ready\r\n"
        process.resize_console(background(), 100, 40)
        assert read_all(stdout) == b"40 100\r\n"
        process.wait()
        assert process.exit_code() == 0


def test_console_stdin_and_eof(host: LocalHost) -> None:
    with started(
        host, "cat", emulate_console=True, create_stdin_pipe=True, create_stdout_pipe=True
    ) as process:
        stdin, stdout, stderr = process.stdio()
        assert stdin is not None and stdout is not None and stderr is None
        stdin.write(b"typed\n")
        process.close_stdin(background())  # ^D: cat reads end of file
        output = read_all(stdout)
        process.wait()
        assert process.exit_code() == 0
        assert output == b"typed\r\ntyped\r\n"  # echoed by the terminal, then by cat


def test_resize_without_console_is_refused(host: LocalHost) -> None:
    with started(host, "true") as process, pytest.raises(StateError, match="no console"):
        process.resize_console(background(), 80, 24)


def test_close_releases_every_descriptor(host: LocalHost) -> None:
    # (the no_leaks fixture checks the descriptors)
    for params in (
        {"create_stdin_pipe": True, "create_stdout_pipe": True, "create_stderr_pipe": True},
        {"emulate_console": True, "create_stdin_pipe": True, "create_stdout_pipe": True},
    ):
        with started(host, "cat", **params) as process:
            process.kill(background())
            process.wait()
            process.close()
            process.close()  # twice: fine
            with pytest.raises(StateError, match=r"closed|no console"):
                process.resize_console(background(), 80, 24)


def test_close_cuts_a_blocked_read(
    host: LocalHost, token: str, kill_tagged: Callable[[str], None]
) -> None:
    # A grandchild keeps stdout open, so a reader would wait forever.
    script = f"HCSOCI_TAG={token} sleep 30 & echo started"
    with started(host, "sh", "-c", script, create_stdout_pipe=True) as process:
        stdout = process.stdio()[1]
        assert stdout is not None and stdout.read(8) == b"started\n"
        process.wait()
        errors: list[BaseException] = []

        def read() -> None:
            try:
                stdout.read(1)
            except ValueError as err:
                errors.append(err)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.05)
        assert reader.is_alive()
        process.close()
        reader.join(10)
        assert not reader.is_alive()
        assert errors and "closed" in str(errors[0])
    kill_tagged(token)


def test_closed_running_process_is_reaped_later(host: LocalHost) -> None:
    config = ProcessParameters(command_args=["sleep", "60"], environment=dict(PATH))
    process = host.create_process(background(), config)
    pid = process.pid()
    process.close()  # still running: handed to the orphan reaper
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _state(pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with started(host, "true"):  # the next start reaps it
        pass
    assert not os.path.exists(f"/proc/{pid}")


def test_pipe_ends_are_real_descriptors(host: LocalHost) -> None:
    with started(host, "cat", create_stdin_pipe=True, create_stdout_pipe=True) as process:
        stdin, stdout, _ = process.stdio()
        assert stdin is not None and stdout is not None
        assert stdout.fileno() > 2 and stdin.fileno() > 2
        assert stdout.readable() and not stdout.writable()
        assert stdin.writable() and not stdin.readable()
        poller = select.poll()
        poller.register(stdout.fileno(), select.POLLIN)
        assert poller.poll(0) == []


def test_errors_are_hcsoci_errors(host: LocalHost) -> None:
    with pytest.raises(HcsociError):
        host.create_process(background(), ProcessParameters(command_args=["/nonexistent"]))
