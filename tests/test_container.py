"""Containers over runc on the busybox image: init and exec processes, stdio, signals, terminal."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import select
import signal
import struct
import termios
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from fixtures_containers import Created, SpecFactory
from hcsoci import context, oci
from hcsoci.container import Container, ContainerProcess, open_container
from hcsoci.cow import OCIProcessParameters
from hcsoci.errors import InvalidArgumentError, NotFoundError, StateError

CTX = context.background()
PATH_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]


def read_all(stream: IO[bytes] | None) -> bytes:
    assert stream is not None
    chunks = []
    while True:
        try:
            chunk = stream.read(65536)
        except OSError:  # a terminal's master reads EIO once the other side is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def run_exec(container: Container, args: list[str], **fields: object) -> tuple[int, bytes, bytes]:
    process = container.create_process(
        CTX,
        oci.Process(args=args, env=fields.pop("env", PATH_ENV), **fields),  # type: ignore[arg-type]
    )
    try:
        _, stdout, stderr = process.stdio()
        out = read_all(stdout)
        err = read_all(stderr) if stderr is not None else b""
        process.wait()
        return process.exit_code(), out, err
    finally:
        process.close()


def started(created: Created, container_spec: SpecFactory) -> Container:
    container, _ = created(container_spec(["sleep", "600"]))
    container.start(CTX)
    return container


def test_init_with_relayed_stdio_output_and_exit_code(
    created: Created, container_spec: SpecFactory
) -> None:
    container, _ = created(container_spec(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert container.properties(CTX).state == "created"
    process = container.create_process(CTX, None)
    try:
        _, stdout, stderr = process.stdio()
        assert read_all(stdout) == b"out\n"
        assert read_all(stderr) == b"err\n"
        process.wait()
        assert process.exit_code() == 3
    finally:
        process.close()
    props = container.properties(CTX)
    assert props.state == "stopped"
    assert props.exit_code == 3
    with pytest.raises(StateError, match="started already"):
        container.create_process(CTX, None)


def test_init_stdin_is_relayed(created: Created, container_spec: SpecFactory) -> None:
    container, _ = created(container_spec(["cat"]))
    process = container.create_process(CTX, None)
    try:
        stdin, stdout, _ = process.stdio()
        assert stdin is not None
        stdin.write(b"through the container\n")
        process.close_stdin(CTX)
        assert read_all(stdout) == b"through the container\n"
        process.wait()
        assert process.exit_code() == 0
    finally:
        process.close()


def test_start_writes_the_init_output_to_the_log_and_wait_sees_init_exit(
    created: Created, container_spec: SpecFactory
) -> None:
    container, _ = created(container_spec(["sh", "-c", "echo logged; exit 7"]))
    container.start(CTX)
    container.wait()
    assert container.properties(CTX).exit_code == 7
    assert container.log_path.read_bytes() == b"logged\n"
    with pytest.raises(StateError):
        container.start(CTX)


def test_exec_env_cwd_and_user(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec)
    code, out, _ = run_exec(
        container,
        ["sh", "-c", 'echo "$GREETING"; pwd; id -u; id -g'],
        env=[*PATH_ENV, "GREETING=hello there"],
        cwd="/tmp",
        user=oci.User(uid=65534, gid=65534),
    )
    assert code == 0
    assert out == b"hello there\n/tmp\n65534\n65534\n"
    props = container.properties(CTX)
    assert props.state == "running"
    assert props.init_pid > 0 and props.init_pid in props.processes
    assert props.memory_usage_bytes is not None and props.memory_usage_bytes > 0
    assert props.cpu_usage_ns is not None and props.cpu_usage_ns > 0


def test_exec_exit_codes_and_signals(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec)
    assert run_exec(container, ["sh", "-c", "exit 42"])[0] == 42
    assert run_exec(container, ["sh", "-c", "kill -TERM $$"])[0] == 128 + signal.SIGTERM


def wait_until_running(pid: int, program: bytes, timeout: float = 30.0) -> None:
    """Until ``pid`` executes ``program`` (its argv[0]), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == program:
                return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not run {program!r} within {timeout} s")


def test_exec_kill_and_signal(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec)
    process = container.create_process(CTX, oci.Process(args=["sleep", "600"], env=PATH_ENV))
    try:
        assert process.pid() > 0
        with pytest.raises(StateError):
            process.exit_code()
        # The pid is the container process's from before it executes `sleep` (runc's
        # init still runs there for a moment, and a signal then would hit runc's init).
        wait_until_running(process.pid(), b"sleep")
        assert process.signal(CTX, signal.SIGUSR1)
        process.wait()
        assert process.exit_code() == 128 + signal.SIGUSR1
        assert not process.kill(CTX)  # gone: not delivered
    finally:
        process.close()


def test_cmd_makes_only_the_pipes_it_relays(created: Created, container_spec: SpecFactory) -> None:
    """A Cmd without stdout/stderr gets no pipes: a chatty process cannot block on one."""
    from hcsoci.cmd import command

    container, _ = created(container_spec(["sleep", "600"]))
    container.start(CTX)
    chatty = command(
        container, "sh", "-c", "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2"
    )
    chatty.run()  # 1 MiB each on stdout and stderr, nobody reading: /dev/null, not a pipe
    assert chatty.exit_state is not None and chatty.exit_state.exit_code == 0
    only_err = command(container, "sh", "-c", "echo out; echo err >&2")
    only_err.stderr = io.BytesIO()
    only_err.run()
    assert only_err.stderr.getvalue() == b"err\n"


def test_cmd_drives_a_container_like_a_local_host(
    created: Created, container_spec: SpecFactory
) -> None:
    from hcsoci.cmd import Cmd, ExitError, command, command_context

    container, _ = created(container_spec(["sh", "-c", "read x; echo init got $x"]))
    init = Cmd(container, None)
    init.stdin = io.BytesIO(b"word\n")
    assert init.output() == b"init got word\n"  # spec=None: the init, stdio relayed

    container, _ = created(container_spec(["sleep", "600"]))
    container.start(CTX)
    assert command(container, "sh", "-c", "echo $PATH; pwd").output() == (
        b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/\n"
    )
    failing = command(container, "sh", "-c", "exit 5")
    with pytest.raises(ExitError) as info:
        failing.run()
    assert info.value.exit_code == 5
    # A context that expires kills the exec'd process: SIGKILL, 128 + 9.
    ctx, cancel = context.with_timeout(CTX, 0.3)
    try:
        with pytest.raises(ExitError) as info:
            command_context(ctx, container, "sleep", "600").run()
        assert info.value.exit_code == 128 + signal.SIGKILL
    finally:
        cancel()
    done_ctx, cancel_done = context.with_cancel(CTX)
    cancel_done()
    with pytest.raises(context.Canceled):
        container.create_process(done_ctx, oci.Process(args=["true"], env=PATH_ENV))


def test_terminate_and_shutdown(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec)
    container.terminate(CTX)
    container.wait()
    assert container.properties(CTX).exit_code == 128 + signal.SIGKILL
    assert container.properties(CTX).state == "stopped"
    with pytest.raises(StateError):
        container.create_process(CTX, oci.Process(args=["true"], env=PATH_ENV))

    trapping, _ = created(
        container_spec(["sh", "-c", 'trap "exit 42" TERM; while true; do sleep 0.05; done'])
    )
    trapping.start(CTX)
    time.sleep(0.2)  # let the shell install its trap
    trapping.shutdown(CTX)
    trapping.wait()
    assert trapping.properties(CTX).exit_code == 42


def test_exec_terminal_and_resize(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec)
    script = (
        "stty size; read line; echo got $line; "
        'for i in $(seq 100); do s=$(stty size); [ "$s" = "40 100" ] && break; sleep 0.02; done; '
        "echo now $s"
    )
    process = container.create_process(
        CTX,
        oci.Process(
            args=["sh", "-c", script],
            env=[*PATH_ENV, "TERM=xterm"],
            terminal=True,
            console_size=oci.Box(height=24, width=80),
        ),
    )
    try:
        stdin, stdout, stderr = process.stdio()
        assert stdin is not None and stdout is not None and stderr is None
        output = read_until(stdout, b"24 80")
        process.resize_console(CTX, 100, 40)
        stdin.write(b"hello\n")
        output += read_all(stdout)
        process.wait()
        assert process.exit_code() == 0
        assert b"got hello" in output
        assert b"now 40 100" in output
    finally:
        process.close()
    plain = container.create_process(CTX, oci.Process(args=["true"], env=PATH_ENV))
    try:
        with pytest.raises(StateError, match="no terminal"):
            plain.resize_console(CTX, 80, 24)
        plain.wait()
    finally:
        plain.close()


def test_a_resize_is_complete_when_resize_console_returns(
    created: Created, container_spec: SpecFactory
) -> None:
    """The container's own pty has the new size at once, not when runc gets round to it."""
    container = started(created, container_spec)
    process = container.create_process(
        CTX,
        oci.Process(
            args=["sh", "-c", "read line"],
            env=PATH_ENV,
            terminal=True,
            console_size=oci.Box(height=24, width=80),
        ),
    )
    try:
        stdin, _, _ = process.stdio()
        assert stdin is not None
        wait_until_running(process.pid(), b"sh")
        runtime = int(Path(f"/proc/{process.pid()}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert Path(f"/proc/{runtime}/comm").read_text().strip() == "runc"
        os.kill(runtime, signal.SIGSTOP)  # runc cannot copy the size inward now
        try:
            process.resize_console(CTX, 132, 50)
            inner = os.open(f"/proc/{process.pid()}/fd/0", os.O_RDONLY | os.O_NOCTTY)
            try:
                size = fcntl.ioctl(inner, termios.TIOCGWINSZ, bytes(8))
            finally:
                os.close(inner)
            assert struct.unpack("HHHH", size)[:2] == (50, 132)
        finally:
            os.kill(runtime, signal.SIGCONT)
        stdin.write(b"\n")
        process.wait()
        assert process.exit_code() == 0
    finally:
        process.close()


def read_until(stream: IO[bytes], marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} in {data!r}"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"EOF before {marker!r} in {data!r}"
        data += chunk
    return data


def test_exec_failures_are_clear(created: Created, container_spec: SpecFactory) -> None:
    container, _ = created(container_spec(["sleep", "600"]))
    with pytest.raises(StateError, match="state created"):
        container.create_process(CTX, oci.Process(args=["true"], env=PATH_ENV))
    container.start(CTX)
    with pytest.raises(NotFoundError, match="no-such-program"):
        container.create_process(CTX, oci.Process(args=["no-such-program"], env=PATH_ENV))
    with pytest.raises(InvalidArgumentError, match="config"):
        container.create_process(CTX, ["not", "a", "process"])


def test_pipes_requested_by_oci_process_parameters(
    created: Created, container_spec: SpecFactory
) -> None:
    container = started(created, container_spec)
    process = container.create_process(
        CTX,
        OCIProcessParameters(  # what a Cmd passes (lcow.ProcessParameters)
            process=oci.Process(args=["sh", "-c", "echo only-out; cat"], env=PATH_ENV),
            create_stdout_pipe=True,
        ),
    )
    try:
        stdin, stdout, stderr = process.stdio()
        assert stdin is None and stderr is None
        assert read_all(stdout) == b"only-out\n"  # cat read EOF from /dev/null
        process.wait()
        assert process.exit_code() == 0
    finally:
        process.close()


def test_open_container_from_the_store(created: Created, container_spec: SpecFactory) -> None:
    container = started(created, container_spec)
    other = open_container(container.id())
    assert other.properties(CTX).state == "running"
    assert other.properties(CTX).init_pid == container.properties(CTX).init_pid
    waiter = threading.Thread(target=other.wait)
    waiter.start()
    other.terminate(CTX)  # through `runc kill`: this handle did not start the init
    waiter.join(10)
    assert not waiter.is_alive()
    container.wait()
    with pytest.raises(NotFoundError) as info:
        open_container("no-such-container")
    assert isinstance(info.value, FileNotFoundError)


def test_process_object_is_a_cow_process(created: Created, container_spec: SpecFactory) -> None:
    from hcsoci import cow

    container, _ = created(container_spec(["true"]))
    assert isinstance(container, cow.Container)
    assert container.is_oci() and container.os() == "linux"
    process = container.create_process(CTX, None)
    try:
        assert isinstance(process, cow.Process)
        assert isinstance(process, ContainerProcess)
        process.wait()
    finally:
        process.close()


def test_cmd_with_a_terminal_returns_at_the_end_of_its_output(
    created: Created, container_spec: SpecFactory
) -> None:
    """EIO from the pty master is the end of the output, not an error of run()."""
    from hcsoci.cmd import command

    container = started(created, container_spec)
    cmd = command(container, "sh", "-c", "echo on the terminal")
    assert cmd.spec is not None
    cmd.spec.terminal = True
    cmd.stdout = io.BytesIO()
    cmd.run()
    assert cmd.stdout.getvalue() == b"on the terminal\r\n"
    assert cmd.process is not None
    _, master, _ = cmd.process.stdio()
    assert master is None  # closed by wait()


def test_cmd_hands_a_file_to_the_container_process(
    created: Created,
    container_spec: SpecFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A regular file as stdout is written by the container process itself: no relay."""
    from hcsoci.cmd import Cmd, command

    data = os.urandom(1 << 20)
    (tmp_path / "data").write_bytes(data)
    spec = container_spec(["sleep", "600"])
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(destination="/data", type="bind", source=str(tmp_path), options=["rbind", "ro"]),
    ]
    container, _ = created(spec)
    container.start(CTX)
    with open(tmp_path / "out", "wb") as out, caplog.at_level(logging.DEBUG, "hcsoci.cmd"):
        cmd = command(container, "cat", "/data/data")
        cmd.stdout = out
        cmd.run()
    assert (tmp_path / "out").read_bytes() == data
    handed = [r.__dict__.get("file") for r in caplog.records if r.__dict__.get("handed_over")]
    assert handed == ["stdout"]
    assert not [r for r in caplog.records if "bytes" in r.__dict__]  # no relay ran

    init_container, _ = created(container_spec(["sh", "-c", "echo init out; echo init err >&2"]))
    with open(tmp_path / "init", "wb") as out:
        init = Cmd(init_container, None, stdout=out, stderr=out)
        init.run()
    assert sorted((tmp_path / "init").read_bytes().splitlines()) == [b"init err", b"init out"]


# --- handed-over descriptors: a detached runtime, reaped by the subreaper ---------------


def _holds(pid: int, fd: int, path: Path) -> bool:
    held, wanted = os.stat(f"/proc/{pid}/fd/{fd}"), path.stat()
    return (held.st_dev, held.st_ino) == (wanted.st_dev, wanted.st_ino)


def test_a_handed_over_init_writes_the_file_itself(
    created: Created, container_spec: SpecFactory, tmp_path: Path
) -> None:
    from hcsoci.cmd import Cmd, ExitError
    from hcsoci.container import DetachedProcess

    container, _ = created(container_spec(["sh", "-c", "echo init; exec sleep 600"]))
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        init = Cmd(container, None, stdout=out)
        init.start()
        assert isinstance(init.process, DetachedProcess)
        assert _holds(init.process.pid(), 1, out_path)
        assert container.properties(CTX).state == "running"
        container.terminate(CTX)
        with pytest.raises(ExitError) as raised:
            init.wait()
        assert raised.value.exit_code == 137
    assert out_path.read_bytes() == b"init\n"
    assert container.properties(CTX).state == "stopped"
    assert container.init_exit_code() == 137
    with pytest.raises(StateError, match="stopped"):
        container.create_process(CTX, oci.Process(args=["true"], env=PATH_ENV))


def test_a_handed_over_exec_that_cannot_start_leaves_nothing(
    created: Created, container_spec: SpecFactory, tmp_path: Path
) -> None:
    from hcsoci.cmd import command

    container = started(created, container_spec)
    with open(tmp_path / "out", "wb") as out:
        cmd = command(container, "no-such-program")
        cmd.stdout = out
        with pytest.raises(NotFoundError, match=r"args\[0\]: 'no-such-program' not found"):
            cmd.run()
    assert list((container.bundle / "exec").iterdir()) == []
    assert container.runtime.ps(container.id()) == [container.properties(CTX).init_pid]


def _subreaper_pid() -> int:
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{name}/stat").read_text()
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and (
                    b"subreaper_server" in cmdline
                ):
                    return int(name)
    raise AssertionError("no subreaper process")


def test_a_lost_subreaper_fails_its_waiters_and_is_started_again(
    created: Created, container_spec: SpecFactory, tmp_path: Path
) -> None:
    """A mock cannot stand in for the subreaper's end: SIGKILL the real one."""
    from hcsoci.cmd import command
    from hcsoci.runtime.subreaper import SubreaperLost

    container = started(created, container_spec)
    with open(tmp_path / "out", "wb") as out:
        cmd = command(container, "sleep", "600")
        cmd.stdout = out
        cmd.start()
        assert cmd.process is not None
        orphan = cmd.process.pid()
        try:
            os.kill(_subreaper_pid(), signal.SIGKILL)
            with pytest.raises(SubreaperLost, match="exit status is lost"):
                cmd.wait()
        finally:
            os.kill(orphan, signal.SIGKILL)
        again = command(container, "sh", "-c", "echo again")
        again.stdout = out
        again.run()
    assert (tmp_path / "out").read_bytes() == b"again\n"
