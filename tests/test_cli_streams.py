"""`hcsoci run` / `exec` streams and signals behave as `docker run` does, through the real CLI.

Every command is a real `hcsoci` process on the session's state root; a test
that fails still kills what it started, runs `hcsoci gc`, and the ``no_leaks``
check then finds no runtime container, state row or mount left.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fixtures_containers import HostSnapshot
from hcsoci import images
from hcsoci.store import state_root

HCSOCI = [sys.executable, "-m", "hcsoci.cli.main"]
NOISE = ("Traceback", "Aborted", "I/O operation on closed file", "Fatal Python error")


@dataclass
class Cli:
    """Starts `hcsoci` processes; whatever still runs at teardown is killed."""

    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(
        self, *args: str, timeout: float = 60, **options: Any
    ) -> subprocess.CompletedProcess[bytes]:
        options.setdefault("capture_output", True)
        return subprocess.run([*HCSOCI, *args], env=self.env, timeout=timeout, **options)

    def spawn(self, *args: str, **options: Any) -> subprocess.Popen[bytes]:
        options.setdefault("stdout", subprocess.PIPE)
        options.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen([*HCSOCI, *args], env=self.env, **options)
        self.started.append(process)
        return process

    def containers(self) -> list[Any]:
        import json

        return list(json.loads(self.run("list", "--json").stdout))


@pytest.fixture
def cli(
    busybox_image: images.Image,
    session_image_store: images.ImageStore,
    no_leaks: Callable[[], HostSnapshot],
) -> Iterator[Cli]:
    tool = Cli({**os.environ, "HCSOCI_IMAGES": str(session_image_store.root)})
    try:
        yield tool
    finally:
        for process in tool.started:
            if process.poll() is None:
                process.kill()
            process.communicate()
        tool.run("gc")


def read_line(process: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    """One line of ``process``'s stdout (the container announcing it is ready)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line from {process.args!r}: {line!r}"
        chunk = os.read(fd, 1)
        assert chunk, f"{process.args!r} ended its output: {line!r}"
        line += chunk
    return line


def finish(process: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int, str]:
    """Wait for ``process``; its status and its stderr, which must be free of noise."""
    _, err = process.communicate(timeout=timeout)
    stderr = err.decode(errors="replace")
    for noise in NOISE:
        assert noise not in stderr, stderr
    return process.returncode, stderr


def assert_released(container_id: str, snapshot: HostSnapshot, now: HostSnapshot) -> None:
    """Nothing of the container is left: runtime state, rows, mounts, scratch folder."""
    assert now == snapshot
    assert not (state_root() / "runc" / container_id).exists()
    assert not (state_root() / "scratch" / container_id).exists()


def wait_for_sleep(cli: Cli, name: str) -> None:
    """Until ``sleep 60`` runs in container ``name`` (the shell before it may catch signals)."""
    deadline = time.monotonic() + 30
    while b"sleep 60" not in cli.run("ps", name).stdout:
        assert time.monotonic() < deadline, f"no sleep 60 in {name}"
        time.sleep(0.05)


TRAP = "trap 'exit 3' {sig}; echo ready; while :; do sleep 0.1; done"
PLAIN = "echo ready; exec sleep 60"  # sleep is the init: no handler for anything


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name
)
@pytest.mark.parametrize("script", ["trap", "plain"])
def test_run_forwards_a_signal_then_releases_everything(
    cli: Cli, no_leaks: Callable[[], HostSnapshot], sig: signal.Signals, script: str
) -> None:
    before = no_leaks()
    name = f"sig-{uuid.uuid4().hex[:8]}"
    body = TRAP.format(sig=sig.name) if script == "trap" else PLAIN
    process = cli.spawn("run", "--rm", "--name", name, "--", "sh", "-c", body)
    assert read_line(process) == b"ready\n"
    if script == "plain":
        wait_for_sleep(cli, name)
    process.send_signal(sig)
    code, _ = finish(process)
    assert code == (3 if script == "trap" else 128 + sig)
    assert_released(name, before, no_leaks())
    assert cli.containers() == []


def test_a_signal_to_the_process_group_reaches_the_container_once(
    cli: Cli, no_leaks: Callable[[], HostSnapshot]
) -> None:
    """A terminal's ^C goes to the whole foreground group: the init must count one."""
    before = no_leaks()
    name = f"pgrp-{uuid.uuid4().hex[:8]}"
    body = (
        "n=0; trap 'n=$((n+1))' INT; echo ready; "
        "while [ $n = 0 ]; do sleep 0.05; done; sleep 1; exit $((10+n))"
    )
    process = cli.spawn("run", "--rm", "--name", name, "--", "sh", "-c", body, process_group=0)
    assert read_line(process) == b"ready\n"
    os.killpg(process.pid, signal.SIGINT)
    code, _ = finish(process)
    assert code == 11  # one SIGINT, not one from us and one from runc
    assert_released(name, before, no_leaks())


@pytest.fixture
def running(cli: Cli) -> Iterator[str]:
    """A running container (`create` + `start`), deleted afterwards."""
    name = f"exec-{uuid.uuid4().hex[:8]}"
    assert cli.run("create", "--name", name, "--", "sleep", "600").returncode == 0
    try:
        assert cli.run("start", name).returncode == 0
        yield name
    finally:
        cli.run("delete", "-f", name)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name
)
@pytest.mark.parametrize("script", ["trap", "plain"])
def test_exec_forwards_a_signal(cli: Cli, running: str, sig: signal.Signals, script: str) -> None:
    body = TRAP.format(sig=sig.name) if script == "trap" else PLAIN
    process = cli.spawn("exec", running, "--", "sh", "-c", body)
    assert read_line(process) == b"ready\n"
    if script == "plain":
        wait_for_sleep(cli, running)
    process.send_signal(sig)
    code, _ = finish(process)
    assert code == (3 if script == "trap" else 128 + sig)
    ps = cli.run("ps", running).stdout.decode()
    assert "sleep 600" in ps  # the container runs on; the exec'd process is gone
    assert re.search(r"\bsleep 60\b", ps) is None and "sh -c" not in ps


def test_yes_into_head_ends_and_leaves_nothing(
    cli: Cli, no_leaks: Callable[[], HostSnapshot]
) -> None:
    before = no_leaks()
    for args, expected in (
        # The init is its pid namespace's init: the kernel sends it no SIGPIPE, yes gets EPIPE.
        ("yes", None),
        # A child of the init dies of SIGPIPE, and the shell reports it.
        ("sh -c 'yes; exit $?'", 141),
    ):
        command = " ".join([*HCSOCI, "run", "--rm", "--", args])
        script = f'{command} | head -c 1M | wc -c; echo "${{PIPESTATUS[@]}}"'
        result = subprocess.run(
            ["bash", "-c", script], env=cli.env, capture_output=True, timeout=60
        )
        count, statuses = result.stdout.decode().split("\n")[:2]
        assert int(count) == 1 << 20
        status = int(statuses.split()[0])
        assert status != 0 if expected is None else status == expected
        assert cli.containers() == []
    assert no_leaks() == before


def test_interactive_with_a_stdin_that_stays_open(cli: Cli) -> None:
    """The process's exit ends the command, whether our stdin is handed over or relayed."""
    read_end, write_end = os.pipe()  # a pipe: handed to the container process
    try:
        started = time.monotonic()
        result = cli.run(
            "run", "--rm", "-i", "--", "sh", "-c", "exit 6", stdin=read_end, timeout=30
        )
        assert result.returncode == 6
        assert time.monotonic() - started < 20
        for noise in NOISE:
            assert noise.encode() not in result.stderr
    finally:
        os.close(read_end)
        os.close(write_end)
    master, slave = pty.openpty()  # a terminal: relayed by a thread reading fd 0
    try:
        result = cli.run("run", "--rm", "-i", "--", "sh", "-c", "exit 6", stdin=slave, timeout=30)
        assert result.returncode == 6
        for noise in NOISE:
            assert noise.encode() not in result.stderr
    finally:
        os.close(master)
        os.close(slave)


def _in_a_terminal(cli: Cli, *args: str, typed: bytes = b"") -> tuple[int, bytes]:
    """Run `hcsoci ARGS` with a pty as its stdin, stdout and stderr; (status, output)."""
    master, slave = pty.openpty()
    try:
        process = cli.spawn(*args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        slave = -1
        if typed:
            os.write(master, typed)
        output = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the last holder of the slave is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=30), output
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_terminal_runs_exit_with_the_code_and_print_nothing_extra(cli: Cli) -> None:
    code, output = _in_a_terminal(cli, "run", "-t", "--rm", "--", "sh", "-c", "echo hi; exit 4")
    assert code == 4
    assert output.replace(b"\r", b"") == b"hi\n"
    code, output = _in_a_terminal(cli, "run", "-t", "--rm", "--", "echo", "hi")
    assert code == 0
    assert output.replace(b"\r", b"") == b"hi\n"
    code, output = _in_a_terminal(
        cli, "run", "-t", "-i", "--rm", "--", "sh", "-c", "read x; echo got $x", typed=b"abc\r"
    )
    assert code == 0
    assert b"got abc" in output and b"Traceback" not in output and b"Error" not in output
    assert cli.containers() == []


def test_a_missing_or_unrunnable_command_is_one_line_and_a_shell_status(cli: Cli) -> None:
    result = cli.run("run", "--rm", "--", "/nonexistent")
    assert result.returncode == 127
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hcsoci: ") and "/nonexistent" in lines[0]
    result = cli.run("run", "--rm", "--", "/etc")
    assert result.returncode == 126
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "not executable" in lines[0]
    assert cli.containers() == []
