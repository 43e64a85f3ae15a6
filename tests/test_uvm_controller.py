"""VM containers across processes: the VM controller process and its clients.

One controller (and VM) serves most of the module (``served``): the test
process is a client like any other, and the CLI runs as separate processes.
A second VM is made by ``hcsoci create --isolation vm`` and its controller
SIGKILLed, for gc.  The module's VM ends when its last container is deleted.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures_uvm import qemu_processes
from hcsoci import ExitError, command, context, cow, images, oci
from hcsoci.container import open_container
from hcsoci.controller import process_alive, process_start_time
from hcsoci.errors import InvalidArgumentError, NotFoundError, StateError
from hcsoci.mounts import mounts_under
from hcsoci.store import open_store, state_root
from hcsoci.uvm import BootAssets, UVMOptions
from hcsoci.uvm.channel import SOCKET_NAME, recv_frame
from hcsoci.uvm.remote import (
    ControllerClient,
    ControllerError,
    RemoteContainer,
    RemoteProcess,
    start_controller,
)

CTX = context.background()
CLI = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class Served:
    """The module's controller: its client, pid, VM and the container that keeps it alive."""

    client: ControllerClient
    pid: int
    vm_id: str
    state_dir: Path
    keeper: str
    image: images.Image
    scratch_root: Path

    def spec(self, args: list[str]) -> oci.Spec:
        spec = images.spec_for_image(self.image, args)
        scratch = tempfile.mkdtemp(prefix="scratch-", dir=self.scratch_root)
        assert spec.windows is not None and spec.windows.layer_folders is not None
        spec.windows.layer_folders = [*spec.windows.layer_folders, scratch]
        return spec


def _vm_gone(vm_id: str, state_dir: Path) -> list[str]:
    """What is left of VM ``vm_id`` on the host (empty: nothing)."""
    left = []
    if qemu_processes(vm_id):
        left.append("qemu")
    if state_dir.exists():
        left.append(f"state dir {state_dir}")
    if mounts_under(state_dir):
        left.append("mounts")
    store = open_store()
    if store.query("SELECT 1 FROM vms WHERE id = ?", (vm_id,)):
        left.append("vms row")
    if store.query("SELECT 1 FROM containers WHERE host = ?", (vm_id,)):
        left.append("container rows")
    if store.query("SELECT 1 FROM vm_devices WHERE vm_id = ?", (vm_id,)):
        left.append("device rows")
    tag_rows = store.query(
        "SELECT 1 FROM resources WHERE json_extract(CAST(data AS TEXT), '$.vm_id') = ?", (vm_id,)
    )
    if tag_rows:
        left.append("resource rows")
    return left


def _wait_gone(pid: int, start: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while process_alive(pid, start):
        assert time.monotonic() < deadline, f"controller {pid} still runs"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(
    uvm_assets: BootAssets, layer_cache: Path, busybox_image: images.Image
) -> Iterator[Served]:
    scratch_root = Path(tempfile.mkdtemp(prefix="hcsoci-ctl-scratch-"))
    vm_id = "tctl-" + secrets.token_hex(4)
    client = start_controller(UVMOptions(id=vm_id, owner="pytest", scsi_luns=8, plan9_slots=4))
    hello = client.call("hello")
    pid = int(hello["pid"])
    start = process_start_time(pid) or 0
    state_dir = Path(open_store().query("SELECT state_dir FROM vms WHERE id = ?", (vm_id,))[0][0])
    served = Served(client, pid, vm_id, state_dir, "keeper-" + vm_id, busybox_image, scratch_root)
    try:
        client.create(served.keeper, served.spec(["sleep", "3600"]), owner="pytest").start(CTX)
        yield served
    finally:
        if process_alive(pid, start):
            for row in client.list():
                client.call("delete", id=row["id"], force=True)
        _wait_gone(pid, start)
        assert _vm_gone(vm_id, state_dir) == []
        for entry in scratch_root.iterdir():
            for file in entry.iterdir():
                file.unlink()
            entry.rmdir()
        scratch_root.rmdir()


@pytest.fixture
def cli(hcsoci: CLI, served: Served) -> CLI:
    """The `hcsoci` command (a process of its own per call)."""
    return hcsoci


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- the CLI, one process per command ----------------------------------------------


def test_cli_create_start_exec_state_kill_delete(cli: CLI, served: Served) -> None:
    name = f"cli-{secrets.token_hex(4)}"
    assert cli("create", "--vm", served.vm_id, "--name", name, "--", "sleep", "600").stdout == (
        f"{name}\n"
    )
    try:
        states = {c["id"]: c["state"] for c in json.loads(cli("list", "--json").stdout)}
        assert states[name] == "created"
        cli("start", name)
        out = cli("exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 4", check=False)
        assert (out.returncode, out.stdout, out.stderr) == (4, "out\n", "err\n")
        fed = cli("exec", "-i", name, "--", "sh", "-c", "tr a-z A-Z; echo end", input="abc\n")
        assert fed.stdout == "ABC\nend\n"
        assert "sleep 600" in cli("ps", name).stdout
        state = json.loads(cli("state", name).stdout)
        assert (state["state"], state["bundle"]) == ("running", f"/run/gcs/c/{name}")
        refused = cli("delete", name, check=False)
        assert refused.returncode == 1 and "use delete -f" in refused.stderr
        cli("kill", name, "KILL")
        deadline = time.monotonic() + 30
        while json.loads(cli("state", name).stdout)["state"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert json.loads(cli("state", name).stdout)["exit_code"] == 137
        late = cli("exec", name, "--", "true", check=False)
        assert late.returncode == 1 and "state stopped" in late.stderr
    finally:
        cli("delete", "-f", name, check=False)
    assert name not in cli("list", "--json").stdout
    gone = cli("exec", name, "--", "true", check=False)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and name in gone.stderr
    assert [c["id"] for c in served.client.list()] == [served.keeper]


def test_cli_run_in_a_served_vm(cli: CLI, served: Served) -> None:
    """``run --vm ID``: a container in that running VM, its output and status, gone with --rm."""
    name = f"run-{secrets.token_hex(4)}"
    done = cli(
        "run", "--rm", "-i", "--vm", served.vm_id, "--name", name,
        "--", "sh", "-c", "tr a-z A-Z; echo err >&2; exit 5",
        input="shout\n", check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (5, "SHOUT\n", "err\n")
    assert name not in cli("list", "--json").stdout
    assert name not in [c["id"] for c in served.client.list()]
    kept = f"keep-{secrets.token_hex(4)}"
    assert cli("run", "--vm", served.vm_id, "--name", kept, "--", "true").returncode == 0
    try:
        assert json.loads(cli("state", kept).stdout)["exit_code"] == 0
    finally:
        cli("delete", "-f", kept, check=False)
    unknown = cli("run", "--rm", "--vm", "no-such-vm", "--", "true", check=False)
    assert unknown.returncode == 125 and unknown.stderr.count("\n") == 1


# --- the library from another process: the proxies -------------------------------------


def test_open_container_gives_a_proxy_commands_run_on(served: Served) -> None:
    container = open_container(served.keeper)
    assert isinstance(container, RemoteContainer) and isinstance(container, cow.Container)
    assert container.vm_id == served.vm_id
    assert container.properties(CTX).state == "running"
    before = _fd_count(served.pid)
    assert command(container, "cat", "/etc/hostname").output().strip()
    cmd = command(container, "sh", "-c", "cat; echo; echo to-err >&2; exit 3")
    cmd.stdin = io.BytesIO(b"x" * 300_000)
    out, err = io.BytesIO(), io.BytesIO()
    cmd.stdout, cmd.stderr = out, err
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 3
    assert out.getvalue() == b"x" * 300_000 + b"\n" and err.getvalue() == b"to-err\n"
    # An endless stdin does not hold the command once the process exited.
    reader, writer = os.pipe()
    try:
        with open(reader, "rb", buffering=0) as stdin:
            cmd = command(container, "sh", "-c", "head -c 3; exit 0")
            cmd.stdin = stdin
            os.write(writer, b"abcdef")
            assert cmd.output() == b"abc"
    finally:
        os.close(writer)
    # Every session gives its descriptors back (its connection closes just after the exit).
    # (At most as many as before: an earlier test's session may still have been closing.)
    deadline = time.monotonic() + 30
    while _fd_count(served.pid) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _fd_count(served.pid) <= before


def test_signals_and_kill_through_the_proxy(served: Served) -> None:
    container = open_container(served.keeper)
    cmd = command(container, "sh", "-c", "trap 'echo got-term; exit 9' TERM; echo ready; "
                                        "while :; do sleep 0.1; done")  # fmt: skip
    reader, writer = os.pipe()
    with open(reader, "rb", buffering=0) as out, open(writer, "wb", buffering=0) as sink:
        cmd.stdout = sink
        cmd.start()
        process = cmd.process
        assert isinstance(process, RemoteProcess) and isinstance(process, cow.Process)
        assert out.read(6) == b"ready\n"
        assert process.signal(CTX, signal.SIGTERM) is True
        with pytest.raises(ExitError) as raised:
            cmd.wait()
        sink.close()
        assert out.read() == b"got-term\n"
    assert raised.value.exit_code == 9
    assert process.signal(CTX, signal.SIGTERM) is False  # exited: not delivered
    sleeper = command(container, "sleep", "600")
    sleeper.start()
    assert sleeper.process is not None and sleeper.process.kill(CTX) is True
    with pytest.raises(ExitError) as killed:
        sleeper.wait()
    assert killed.value.exit_code == 137


def test_a_terminal_and_its_resize_through_the_proxy(served: Served) -> None:
    container = open_container(served.keeper)
    cmd = command(container, "sh", "-c", "tty; stty size; read x; stty size; exit 5")
    assert cmd.spec is not None
    cmd.spec.terminal = True
    cmd.spec.console_size = oci.Box(height=24, width=80)
    keys_r, keys_w = os.pipe()
    screen_r, screen_w = os.pipe()
    with (
        open(keys_r, "rb", buffering=0) as keys,
        open(screen_w, "wb", buffering=0) as sink,
        open(screen_r, "rb", buffering=0) as screen,
    ):
        cmd.stdin, cmd.stdout = keys, sink
        cmd.start()
        assert cmd.process is not None
        seen = b""
        try:
            while b"24 80\r\n" not in seen:
                chunk = screen.read(4096)
                assert chunk, seen
                seen += chunk
            assert b"/dev/pts/" in seen
            cmd.process.resize_console(CTX, 132, 50)
            os.write(keys_w, b"\n")
            with pytest.raises(ExitError) as raised:
                cmd.wait()
            sink.close()
            seen += screen.read()
        finally:
            os.close(keys_w)
    assert raised.value.exit_code == 5
    assert b"50 132\r\n" in seen, seen
    plain = command(container, "sleep", "60")
    plain.start()
    try:
        assert plain.process is not None
        with pytest.raises(StateError):
            plain.process.resize_console(CTX, 100, 40)
    finally:
        assert plain.process is not None
        plain.process.kill(CTX)
        with pytest.raises(ExitError):
            plain.wait()


def test_init_with_relayed_stdio_and_container_wait(served: Served) -> None:
    name = f"init-{secrets.token_hex(4)}"
    container = served.client.create(name, served.spec(["sh", "-c", "read x; echo got $x; exit 6"]))
    try:
        cmd = command(container, "unused")
        cmd.spec = None  # the init, with relayed stdio
        cmd.stdin = io.BytesIO(b"hello\n")
        with pytest.raises(ExitError) as raised:
            cmd.output()
        assert raised.value.exit_code == 6 and raised.value.output == b"got hello\n"
        container.wait()
        props = open_container(name).properties(CTX)
        assert (props.state, props.exit_code) == ("stopped", 6)
        with pytest.raises(StateError):
            container.start(CTX)  # the init ran once
    finally:
        container.delete(CTX)
    with pytest.raises(NotFoundError):
        open_container(name)


def test_two_clients_at_once(served: Served, hcsoci: CLI) -> None:
    container = open_container(served.keeper)
    results: dict[str, bytes] = {}

    def run(tag: str) -> None:
        script = f"for i in $(seq 200); do echo {tag}$i; done"
        results[tag] = command(container, "sh", "-c", script).output()

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    other = hcsoci("exec", served.keeper, "--", "sh", "-c", "seq 3")
    for thread in threads:
        thread.join()
    assert other.stdout == "1\n2\n3\n"
    for tag in ("a", "b"):
        assert results[tag] == b"".join(f"{tag}{i}\n".encode() for i in range(1, 201))


# --- bad input --------------------------------------------------------------------------


def _raw(served: Served, data: bytes, fds: list[int] | None = None) -> dict[str, object] | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(served.state_dir / SOCKET_NAME))
        if fds:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(
                f"{len(fds)}i", *fds))])  # fmt: skip
        else:
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_frame(sock)


def _frame(message: object) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def test_garbage_on_the_socket_gets_an_error_and_the_controller_serves_on(served: Served) -> None:
    bad: list[tuple[bytes, str]] = [
        (b"\xff\xff\xff\xff", "exceeds the limit"),
        (struct.pack(">I", 5) + b"nope!", "not JSON"),
        (_frame([1, 2]), "not an object"),
        (_frame({"op": "reboot"}), "unknown"),
        (_frame({"op": 7}), "unknown"),
        (_frame({"op": "get", "id": "../../etc"}), "not a valid id"),
        (_frame({"op": "get", "id": "no-such-container"}), "does not exist"),
        (_frame({"op": "kill", "id": served.keeper, "signal": "KILL"}), "request.signal"),
        (_frame({"op": "create", "id": "x1", "spec": {"ociVersion": 3}}), "spec"),
        (_frame({"op": "exec", "id": served.keeper, "process": None, "streams": [True]}),
         "streams"),
        (_frame({"op": "signal_process", "token": "0" * 32, "signal": 9}), "no such process"),
        (struct.pack(">I", 100) + b"{", "closed in the middle"),
        (b"[" * 10 + struct.pack(">I", 10), "exceeds the limit"),
        (_frame({"op": "get", "id": "a" * 10_000}), "not a valid id"),
    ]  # fmt: skip
    deep = b"[" * 100_000 + b"]" * 100_000
    bad.append((struct.pack(">I", len(deep)) + deep, "not JSON"))
    for data, expected in bad:
        reply = _raw(served, data)
        assert reply is not None and reply["ok"] is False, (data[:40], reply)
        assert expected in str(reply["error"]), (data[:40], reply)
        assert "\n" not in str(reply["error"])
    # Descriptors that do not match the request, and too many of them, are closed.
    r, w = os.pipe()
    try:
        frame = _frame({"op": "exec", "id": served.keeper, "process": None,
                        "streams": [False, True, False]})  # fmt: skip
        reply = _raw(served, frame, [w, w])
        assert reply is not None and "descriptors" in str(reply["error"])
        reply = _raw(served, frame, [w, w, w, w])
        assert reply is not None and "descriptors" in str(reply["error"])
    finally:
        os.close(w)
    with open(r, "rb") as pipe:
        assert pipe.read() == b""  # every copy the controller got was closed
    # A client that connects and says nothing, or leaves mid-frame, changes nothing.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(served.state_dir / SOCKET_NAME))
        idle.sendall(struct.pack(">I", 50))
    assert served.client.call("hello")["pid"] == served.pid
    container = open_container(served.keeper)
    assert command(container, "echo", "still serving").output() == b"still serving\n"
    with pytest.raises(InvalidArgumentError):
        served.client.call("get", id="-x")
    with pytest.raises(NotFoundError):
        served.client.container("nope")


def test_only_root_reaches_the_socket(served: Served) -> None:
    sock_path = served.state_dir / SOCKET_NAME
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((served.state_dir / "controller.log").stat().st_mode) == 0o600
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('refused')\n"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-I", "-c", probe, str(sock_path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout == "refused\n"


def test_unknown_ids_and_a_missing_socket_give_one_line_errors(served: Served, cli: CLI) -> None:
    for args in (("start", "nope"), ("state", "nope"), ("kill", "nope"), ("delete", "nope")):
        result = cli(*args, check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (args, result.stderr)
        assert "nope" in result.stderr
    sock = served.state_dir / SOCKET_NAME
    away = served.state_dir / "controller.sock.away"
    os.rename(sock, away)
    try:
        result = cli("exec", served.keeper, "--", "true", check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1
        assert "has no controller process" in result.stderr
        with pytest.raises(ControllerError):
            open_container(served.keeper)
    finally:
        os.rename(away, sock)
    assert cli("exec", served.keeper, "--", "true").returncode == 0


# --- a controller that dies; a controller whose last container goes ---------------------


def test_a_killed_controller_is_reclaimed_by_gc(cli: CLI) -> None:
    name = f"orphan-{secrets.token_hex(4)}"
    cli("create", "--isolation", "vm", "--name", name, "--", "sleep", "600", timeout=240)
    row = open_store().query("SELECT host FROM containers WHERE id = ?", (name,))[0]
    vm_id = str(row["host"])
    vm_row = open_store().query("SELECT * FROM vms WHERE id = ?", (vm_id,))[0]
    pid, start = int(vm_row["controller_pid"]), int(vm_row["controller_start"])
    state_dir = Path(vm_row["state_dir"])
    assert process_alive(pid, start) and qemu_processes(vm_id)
    cli("start", name)
    assert cli("exec", name, "--", "echo", "alive").stdout == "alive\n"
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, start)
    dead = cli("exec", name, "--", "true", check=False)
    assert dead.returncode == 1 and dead.stderr.count("\n") == 1
    assert "is gone" in dead.stderr and "hcsoci gc" in dead.stderr
    collected = cli("gc").stdout
    assert name in collected and f"released utility VM {vm_id}" in collected
    assert _vm_gone(vm_id, state_dir) == []
    assert not (state_root() / "scratch" / name).exists()
    assert name not in cli("list", "--json").stdout


def test_deleting_the_last_container_ends_the_controller_and_its_vm(served: Served) -> None:
    start = process_start_time(served.pid) or 0
    names = [row["id"] for row in served.client.list()]
    assert names == [served.keeper]
    keeper = open_container(served.keeper)
    assert isinstance(keeper, RemoteContainer)
    keeper.delete(CTX, force=True)
    _wait_gone(served.pid, start)
    assert _vm_gone(served.vm_id, served.state_dir) == []
    with pytest.raises(NotFoundError):
        open_container(served.keeper)


def test_a_handed_over_vm_keeps_its_controller_until_uvm_rm(cli: CLI) -> None:
    vm_id = "tho-" + secrets.token_hex(4)
    assert cli("uvm", "create", "--id", vm_id, timeout=240).stdout == f"{vm_id}\n"
    state_dir = Path(open_store().query("SELECT state_dir FROM vms WHERE id = ?", (vm_id,))[0][0])
    try:
        first, second = (f"ho{n}-{secrets.token_hex(3)}" for n in (1, 2))
        cli("create", "--vm", vm_id, "--name", first, "--", "sleep", "600")
        pid = int(ControllerClient.for_vm(vm_id).call("hello")["pid"])
        start = process_start_time(pid) or 0
        cli("start", first)
        assert cli("exec", first, "--", "echo", "served").stdout == "served\n"
        cli("delete", "-f", first)
        # The user's VM outlives its last container, and so does the controller serving it.
        assert process_alive(pid, start) and qemu_processes(vm_id)
        cli("create", "--vm", vm_id, "--name", second, "--", "true")
        assert int(ControllerClient.for_vm(vm_id).call("hello")["pid"]) == pid
        cli("delete", second)
        assert (
            open_store().query("SELECT controller_pid FROM vms WHERE id = ?", (vm_id,))[0][0] == 0
        )
    finally:
        cli("uvm", "rm", vm_id, check=False)
    _wait_gone(pid, start)
    assert _vm_gone(vm_id, state_dir) == []
