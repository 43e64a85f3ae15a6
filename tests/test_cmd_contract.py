"""One ``Cmd`` contract, proven on every process host.

Every case runs on the four hosts ``Cmd`` knows: ``LocalHost``, a runc
``Container`` on this machine, a ``UtilityVM`` (its own OS), and a container
in that VM.  The cases are hcsshim's ``cmd_test.go`` and each line of
DESIGN.md's "Semantics worth keeping" about ``Cmd``.  One VM serves the whole
module, and one started container per kind (running ``sleep``) serves every
case that only needs an extra process in it (``command(container, ...)``).

Each case must leave no descriptor, thread or child process of this process
behind (compared with what the module's fixtures hold), and kills whatever
stray it started inside a host, even when it fails.

Sinks and sources are Python objects (``io.BytesIO`` and the small classes
below): a real descriptor would be handed straight to a process on this
machine, and then no relay would be tested.  The cases at the end hand real
descriptors over on purpose.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fixtures_cmd import assert_nothing_left, snapshot
from hcsoci import (
    ClosedPipeError,
    Cmd,
    CreateOptions,
    ExitError,
    LocalHost,
    command,
    command_context,
    context,
    create_container,
    images,
    oci,
    release_resources,
)
from hcsoci.context import Context, background
from hcsoci.cow import ProcessHost
from hcsoci.errors import InvalidArgumentError, StateError
from hcsoci.resources import Resources
from hcsoci.runtime.subreaper import default_subreaper
from hcsoci.uvm import UtilityVM

HOSTS = ["local", "container", "vm", "vm_container"]

SIXTEEN_MIB = 16 << 20


# --- the hosts -------------------------------------------------------------------------


@dataclass
class Host:
    """One process host under test, and how to clean up inside it."""

    name: str
    host: ProcessHost
    tmp: str
    """A directory for the case's files, as the host's processes see it."""
    kill_tagged: Callable[[str], None]
    """SIGKILL every process in the host whose environment has the tag."""
    remote: bool
    """Whether its processes run in the utility VM (slower: TCG)."""


def _spec(image: images.Image, scratch_parent: Path, args: list[str]) -> oci.Spec:
    spec = images.spec_for_image(image, args)
    assert spec.windows is not None and spec.windows.layer_folders is not None
    scratch = tempfile.mkdtemp(prefix="scratch-", dir=scratch_parent)
    spec.windows.layer_folders = [*spec.windows.layer_folders, scratch]
    return spec


@pytest.fixture(scope="module")
def scratch_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-scratch")


@pytest.fixture(scope="module")
def host_container(
    busybox_image: images.Image, scratch_parent: Path
) -> Iterator[tuple[ProcessHost, Resources]]:
    """A started runc container running ``sleep`` (its init), released at the end."""
    container, resources = create_container(
        background(), CreateOptions(spec=_spec(busybox_image, scratch_parent, ["sleep", "3600"]))
    )
    try:
        container.start(background())
        yield container, resources
    finally:
        container.close()
        release_resources(background(), resources, None, True)


@pytest.fixture(scope="module")
def vm_container(
    uvm: UtilityVM, layer_cache: Path, busybox_image: images.Image, scratch_parent: Path
) -> Iterator[tuple[ProcessHost, Resources]]:
    """A started container in the module's VM running ``sleep``, released before the VM goes."""
    spec = _spec(busybox_image, scratch_parent, ["sleep", "3600"])
    container, resources = create_container(
        background(), CreateOptions(spec=spec, hosting_system=uvm)
    )
    try:
        container.start(background())
        yield container, resources
    finally:
        container.close()
        release_resources(background(), resources, uvm, True)


def _kill_tagged_in_vm(vm: UtilityVM) -> Callable[[str], None]:
    def kill(tag: str) -> None:
        # One grep over every environment: a process start costs tens of ms under TCG.
        script = (
            f"for f in $(grep -lsz '^HCSOCI_TAG={tag}$' /proc/[0-9]*/environ); do"
            " p=${f#/proc/}; kill -9 ${p%/environ} 2>/dev/null; done; true"
        )
        command(vm, "sh", "-c", script).run()

    return kill


@pytest.fixture(params=HOSTS)
def host(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kill_tagged: Callable[[str], None],
) -> Host:
    """The host of this case (module fixtures are made on first use and kept)."""
    name = request.param
    if name == "local":
        return Host(name, LocalHost(), str(tmp_path), kill_tagged, remote=False)
    if name == "container":
        container, _ = request.getfixturevalue("host_container")
        return Host(name, container, "/tmp", kill_tagged, remote=False)
    vm: UtilityVM = request.getfixturevalue("uvm")
    if name == "vm":
        return Host(name, vm, "/tmp", _kill_tagged_in_vm(vm), remote=True)
    container, _ = request.getfixturevalue("vm_container")
    return Host(name, container, "/tmp", _kill_tagged_in_vm(vm), remote=True)


@pytest.fixture(autouse=True)
def no_leaks(host: Host) -> Iterator[None]:
    """No descriptor, thread or child of this process outlives the case.

    Taken after ``host``, so that what the module's fixtures hold (the VM's
    QEMU and bridge threads, a container's ``runc run``) is not counted.
    """
    _, cancel = context.with_timeout(background(), 3600)  # the shared deadline timer thread
    cancel()
    default_subreaper().start()  # the process-wide reaper of detached runtimes' processes
    before = snapshot()
    yield
    assert_nothing_left(before, settle=10.0)


# --- sources and sinks ---------------------------------------------------------------


class Sink(io.RawIOBase):
    """A binary sink (no descriptor: always relayed) that a test can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self._data = bytearray()
        self._cond = threading.Condition()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with self._cond:
            self._data += data
            self._cond.notify_all()
        return len(data)

    def value(self) -> bytes:
        with self._cond:
            return bytes(self._data)

    def wait_for(self, needle: bytes, timeout: float = 30.0) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: needle in self._data, timeout)
            return bytes(self._data)


class Feeder(io.RawIOBase):
    """A binary source fed by the test; a read blocks until fed, or until :meth:`end`."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__()
        self._pending = bytearray(data)
        self._ended = False
        self._cond = threading.Condition()

    def readable(self) -> bool:
        return True

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._pending += data
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    def readinto(self, buffer: Any) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._ended)
            n = min(len(buffer), len(self._pending))
            buffer[:n] = self._pending[:n]
            del self._pending[:n]
            return n


class FailingReader(io.RawIOBase):
    """A source whose read fails (a fault no real stream can be made to produce on cue)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise OSError(errno.EIO, "Input/output error (simulated)")


class WatchedContext(Context):
    """A context that counts the callbacks registered on it and not yet unregistered."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = 0
        self._count_lock = threading.Lock()

    def after_done(self, callback: Callable[[], None]) -> Callable[[], bool]:
        stop = super().after_done(callback)
        with self._count_lock:
            self.watching += 1

        def counted_stop() -> bool:
            with self._count_lock:
                self.watching -= 1
            return stop()

        return counted_stop


def _token() -> str:
    return "hcsoci-c-" + secrets.token_hex(4)


def _end(cmd: Cmd) -> None:
    """Kill and wait for a started command a failed case left running (errors ignored)."""
    process = cmd.process
    if process is None:
        return
    try:
        process.kill(background())
        cmd.wait()
    except (ExitError, ClosedPipeError, StateError):
        pass


# --- exit codes and output -----------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 255])
def test_exit_code(host: Host, code: int) -> None:
    cmd = command(host.host, "sh", "-c", f"exit {code}")
    if code == 0:
        cmd.run()
    else:
        with pytest.raises(ExitError) as raised:
            cmd.run()
        assert raised.value.exit_code == code
        assert str(raised.value) == f"process exited with exit code {code}"
    assert cmd.exit_state.exit_code == code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_by_signal_n_reports_128_plus_n(host: Host, sig: int) -> None:
    cmd = command(host.host, "sh", "-c", f"kill -{int(sig)} $$")
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 128 + sig
    assert cmd.exit_state.exit_code == 128 + sig


def test_output(host: Host) -> None:
    assert command(host.host, "echo", "hello").output() == b"hello\n"
    with pytest.raises(ExitError) as raised:
        command(host.host, "sh", "-c", "echo partial; exit 3").output()
    assert raised.value.output == b"partial\n"
    assert raised.value.exit_code == 3


def test_copy_complete_is_logged_per_stream(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    cmd = command(host.host, "sh", "-c", "cat; echo err >&2")
    cmd.stdin = io.BytesIO(b"12345")
    cmd.stderr = io.BytesIO()
    with caplog.at_level(logging.DEBUG, logger="hcsoci.cmd"):
        assert cmd.output() == b"12345"
    done = {
        r.file: r  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("command copy complete")
    }
    assert set(done) == {"stdin", "stdout", "stderr"}
    assert [done[name].bytes for name in ("stdin", "stdout", "stderr")] == [5, 5, 4]  # type: ignore[attr-defined]
    assert all(r.levelno == logging.DEBUG for r in done.values())


# --- stdin -----------------------------------------------------------------------------


def test_stdin_bytes_in_exact_bytes_out(host: Host) -> None:
    data = random.Random(10).randbytes(1 << 20)
    cmd = command(host.host, "cat")
    cmd.stdin = io.BytesIO(data)
    out = cmd.output()
    assert len(out) == len(data) and out == data


def test_stdin_that_never_ends_is_not_waited_for(host: Host) -> None:
    # The caller's reader gives one line and then blocks for good: wait() returns
    # when the process exits all the same.  A timer ends the reader after 60 s,
    # so a wait() that does wait for it fails the case instead of hanging it.
    reader = Feeder(b"line\n")
    fuse = threading.Timer(60.0, reader.end)
    fuse.start()
    try:
        cmd = command(host.host, "sh", "-c", "read line; echo got $line")
        cmd.stdin = reader
        assert cmd.output() == b"got line\n"
        assert not reader.ended, "wait() waited for the stdin relay"
    finally:
        fuse.cancel()
        fuse.join()
        reader.end()  # now the stdin relay reads EOF and ends (no_leaks checks)


def test_context_timeout_kills_a_process_blocked_on_stdin(host: Host) -> None:
    # Long enough for the start (a VM's runc exec takes a second or two under TCG).
    timeout = 4.0 if host.remote else 1.0
    reader = Feeder()
    ctx, cancel = context.with_timeout(background(), timeout)
    cmd = command_context(ctx, host.host, "cat")
    cmd.stdin = reader
    try:
        cmd.start()
        assert not ctx.done().is_set(), "the start took longer than the context lives"
        with pytest.raises(ExitError) as raised:
            cmd.wait()
        assert raised.value.exit_code == 128 + signal.SIGKILL
        assert isinstance(ctx.err(), context.DeadlineExceeded)
    finally:
        cancel()
        reader.end()
        _end(cmd)


def test_context_cancel_kills_and_a_finished_command_stops_watching(host: Host) -> None:
    ctx, cancel = context.with_cancel(background())
    try:
        cmd = command_context(ctx, host.host, "sleep", "60")
        cmd.start()
        cancel()
        with pytest.raises(ExitError) as raised:
            cmd.wait()
        assert raised.value.exit_code == 128 + signal.SIGKILL
    finally:
        cancel()
    watched = WatchedContext()
    cmd = command(host.host, "echo", "x")
    cmd.context = watched
    assert cmd.output() == b"x\n"
    assert watched.watching == 0, "the finished command still watches its context"


def test_start_refuses_a_done_context(host: Host) -> None:
    ctx, cancel = context.with_cancel(background())
    cancel()
    cmd = command_context(ctx, host.host, "true")
    with pytest.raises(context.Canceled):
        cmd.start()
    assert cmd.process is None


def test_stdin_error_surfaces_only_on_a_clean_exit(host: Host) -> None:
    cmd = command(host.host, "cat")
    cmd.stdin = FailingReader()
    with pytest.raises(OSError, match="simulated"):
        cmd.output()
    cmd = command(host.host, "sh", "-c", "cat; exit 3")
    cmd.stdin = FailingReader()
    with pytest.raises(ExitError) as raised:
        cmd.output()
    assert raised.value.exit_code == 3


# --- stuck output ---------------------------------------------------------------------


def test_copy_after_exit_timeout_cuts_stuck_io(host: Host) -> None:
    # A background child keeps stdout open for 30 s after the process exited.
    tag = _token()
    cmd = command(host.host, "sh", "-c", f"HCSOCI_TAG={tag} sleep 30 & echo started")
    cmd.stdout = io.BytesIO()
    cmd.copy_after_exit_timeout = 0.5
    try:
        cmd.start()
        began = time.monotonic()
        with pytest.raises(ClosedPipeError):
            cmd.wait()
        took = time.monotonic() - began
    finally:
        host.kill_tagged(tag)
    assert cmd.stdout.getvalue() == b"started\n"  # what came before the cut is kept
    assert cmd.exit_state.exit_code == 0
    # From start() on: the process's run, its exit's report, 0.5 s, and the cut.
    limit = 5.0 if host.remote else 2.0
    assert 0.5 <= took < limit, f"wait() took {took:.2f} s"


def test_a_done_context_cuts_stuck_io_without_a_copy_timeout(host: Host) -> None:
    tag = _token()
    ctx, cancel = context.with_cancel(background())
    cmd = command_context(ctx, host.host, "sh", "-c", f"HCSOCI_TAG={tag} sleep 30 & echo hi")
    cmd.stdout = io.BytesIO()
    try:
        cmd.start()
        assert cmd.process is not None
        cmd.process.wait()
        cancel()  # no copy_after_exit_timeout: only the context ends the wait
        began = time.monotonic()
        with pytest.raises(ClosedPipeError):
            cmd.wait()
        assert time.monotonic() - began < (5.0 if host.remote else 2.0)
    finally:
        cancel()
        host.kill_tagged(tag)
    assert cmd.exit_state.exit_code == 0


# --- wait once --------------------------------------------------------------------------


def test_wait_can_be_called_once(host: Host) -> None:
    cmd = command(host.host, "true")
    with pytest.raises(StateError, match="not started"):
        cmd.wait()
    cmd.run()
    with pytest.raises(StateError, match="already called"):
        cmd.wait()
    with pytest.raises(StateError, match="already started"):
        cmd.start()


# --- signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["signal", "kill"])
def test_signals_through_the_process(host: Host, how: str) -> None:
    out = Sink()
    cmd = command(host.host, "sh", "-c", "echo ready; exec sleep 60")
    cmd.stdout = out
    cmd.start()
    assert cmd.process is not None
    try:
        assert out.wait_for(b"ready\n") == b"ready\n"
        if how == "signal":
            assert cmd.process.signal(background(), signal.SIGTERM) is True
            expected = 128 + signal.SIGTERM
        else:
            assert cmd.process.kill(background()) is True
            expected = 128 + signal.SIGKILL
        cmd.process.wait()
        assert cmd.process.signal(background(), signal.SIGTERM) is False  # gone: not delivered
    finally:
        cmd.process.kill(background())
        with pytest.raises(ExitError) as raised:
            cmd.wait()
    assert raised.value.exit_code == expected


# --- terminals --------------------------------------------------------------------------


def test_terminal_and_resize_console(host: Host) -> None:
    cmd = command(host.host, "sh", "-c", "stty size; read x; stty size")
    assert cmd.spec is not None
    cmd.spec.terminal = True
    cmd.spec.console_size = oci.Box(height=24, width=80)
    keys = Feeder()
    screen = Sink()
    cmd.stdin = keys
    cmd.stdout = screen
    cmd.start()
    try:
        assert cmd.process is not None
        assert b"24 80\r\n" in screen.wait_for(b"24 80\r\n")
        cmd.process.resize_console(background(), 132, 50)
        keys.feed(b"\n")
        keys.end()
        cmd.wait()
    finally:
        keys.end()
        _end(cmd)
    assert b"50 132\r\n" in screen.value(), screen.value()


def test_no_terminal_no_resize(host: Host) -> None:
    cmd = command(host.host, "sleep", "60")
    cmd.start()
    assert cmd.process is not None
    try:
        with pytest.raises(StateError):
            cmd.process.resize_console(background(), 100, 40)
    finally:
        cmd.process.kill(background())
        with pytest.raises(ExitError):
            cmd.wait()


# --- bulk output ------------------------------------------------------------------------


def test_16_mib_through_stdout_and_stderr_at_once(host: Host) -> None:
    path = f"{host.tmp}/bulk-{secrets.token_hex(4)}"
    try:
        command(host.host, "sh", "-c", f"head -c {SIXTEEN_MIB} /dev/urandom > {path}").run()
        digest = command(host.host, "sha256sum", path).output().split()[0].decode()
        cmd = command(host.host, "sh", "-c", f"cat {path} & cat {path} >&2; wait")
        out, err = io.BytesIO(), io.BytesIO()
        cmd.stdout, cmd.stderr = out, err
        cmd.run()
    finally:
        command(host.host, "rm", "-f", path).run()
    for stream in (out, err):
        data = stream.getvalue()
        assert len(data) == SIXTEEN_MIB
        assert hashlib.sha256(data).hexdigest() == digest


# --- a container's init through Cmd ----------------------------------------------------


def test_spec_none_runs_a_created_containers_init_with_relayed_stdio(
    host: Host, request: pytest.FixtureRequest, busybox_image: images.Image, scratch_parent: Path
) -> None:
    if host.name in ("local", "vm"):
        # Not a container: there is no init to start, and a non-OCI host needs a spec.
        with pytest.raises(InvalidArgumentError, match="needs a process spec"):
            Cmd(host.host).run()
        return
    spec = _spec(busybox_image, scratch_parent, ["sh", "-c", "cat; echo init-err >&2; exit 4"])
    hosting = request.getfixturevalue("uvm") if host.name == "vm_container" else None
    container, resources = create_container(
        background(), CreateOptions(spec=spec, hosting_system=hosting)
    )
    try:
        cmd = Cmd(container)  # spec=None: the init, with relayed stdio
        cmd.stdin = io.BytesIO(b"to the init\n")
        cmd.stderr = io.BytesIO()
        with pytest.raises(ExitError) as raised:
            cmd.output()
        assert raised.value.exit_code == 4
        assert raised.value.output == b"to the init\n"
        assert cmd.stderr.getvalue() == b"init-err\n"
        container.wait()
    finally:
        container.close()
        release_resources(background(), resources, hosting, True)


# --- real descriptors ------------------------------------------------------------------
#
# A caller's file or pipe is the process's own stdio on a host that runs the
# process on this machine (LocalHost; a runc container, whose runtime runs
# detached for it so that nothing copies): its descriptor 1 is the caller's
# file.  A process in the utility VM runs in another kernel, where no
# descriptor of ours can exist: there the same bytes arrive through the relay.


def _same_file(pid: int, fd: int, path: str) -> bool:
    held, wanted = os.stat(f"/proc/{pid}/fd/{fd}"), os.stat(path)
    return (held.st_dev, held.st_ino) == (wanted.st_dev, wanted.st_ino)


def test_a_real_descriptor_is_the_process_own_stdio(host: Host, tmp_path: Path) -> None:
    out_path = str(tmp_path / "out")
    read_end, write_end = os.pipe()
    with open(read_end, "rb", buffering=0) as stdin, open(out_path, "wb") as stdout:
        cmd = command(host.host, "sh", "-c", "read line; echo got $line")
        cmd.stdin, cmd.stdout = stdin, stdout
        try:
            cmd.start()
            assert cmd.process is not None
            if not host.remote:
                pid = cmd.process.pid()
                assert _same_file(pid, 1, out_path), "stdout is not the caller's file"
                assert os.readlink(f"/proc/{pid}/fd/0") == os.readlink(f"/proc/self/fd/{read_end}")
            os.write(write_end, b"hello\n")
        finally:
            os.close(write_end)
        cmd.wait()
    assert Path(out_path).read_bytes() == b"got hello\n"
    assert cmd.exit_state.exit_code == 0


def test_a_handed_over_process_is_not_waited_for_past_its_exit(host: Host, tmp_path: Path) -> None:
    # A background child holds the caller's file open for good; on a host that
    # hands the file over nothing reads it, so nothing waits for its end: wait()
    # returns at the process's exit, with no copy timeout.  (Relayed, the copy
    # timeout cuts it, as above.)  A fuse kills the child after 60 s, so a wait()
    # that does wait for it fails the case instead of hanging it.
    tag = _token()
    fuse = threading.Timer(60.0, host.kill_tagged, [tag])
    with open(tmp_path / "out", "wb") as stdout:
        cmd = command(host.host, "sh", "-c", f"HCSOCI_TAG={tag} sleep 600 & echo started")
        cmd.stdout = stdout
        if host.remote:
            cmd.copy_after_exit_timeout = 0.5
        fuse.start()
        try:
            if host.remote:
                with pytest.raises(ClosedPipeError):
                    cmd.run()
            else:
                cmd.run()
            assert fuse.is_alive(), "wait() waited for the background child"
        finally:
            fuse.cancel()
            fuse.join()
            host.kill_tagged(tag)
    assert (tmp_path / "out").read_bytes() == b"started\n"
    assert cmd.exit_state.exit_code == 0


@pytest.mark.parametrize("how", ["context", "kill"])
def test_a_handed_over_process_is_killed_and_reports_137(
    host: Host, tmp_path: Path, how: str
) -> None:
    ctx, cancel = context.with_cancel(background())
    with open(tmp_path / "out", "wb") as stdout:
        cmd = command_context(ctx, host.host, "sh", "-c", "echo up; exec sleep 600")
        cmd.stdout = stdout
        try:
            cmd.start()
            assert cmd.process is not None
            if how == "context":
                cancel()
            else:
                assert cmd.process.kill(background())
            with pytest.raises(ExitError) as raised:
                cmd.wait()
        finally:
            cancel()
            _end(cmd)
    assert raised.value.exit_code == 137
    assert cmd.process is not None and not cmd.process.kill(background())  # gone: not delivered
