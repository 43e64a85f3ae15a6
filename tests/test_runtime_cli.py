"""``hcsoci-runc`` on its own, over the real runc: runc's commands, output and exit status.

What an engine relies on (see interop/CLI-SURFACE.md): ``create`` leaves the
init waiting with its pid in ``--pid-file``, the pty master goes over
``--console-socket``, ``exec --detach`` likewise, ``ps --format json`` gives
host pids, errors are one line on stderr (and JSON in ``--log``) with exit
status 1 and nothing half-made left behind; and hcsoci's store and gc see the
containers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures_engines import RUNTIME, RUNTIME_VM, release_runtime_leftovers, runtime_leftovers
from hcsoci import container_table, context
from hcsoci.errors import InvalidArgumentError
from hcsoci.gc import collect
from hcsoci.ids import check_id, is_valid_id
from hcsoci.images.archive import extract_layer
from hcsoci.images.default import build_layer
from hcsoci.paths import ID_PATTERN
from hcsoci.runtime_cli import records
from hcsoci.runtime_cli.annotations import (
    ISOLATION,
    POD_SCHEMES,
    may_name_isolation,
    may_name_pod_role,
)
from hcsoci.store import Store

pytestmark = pytest.mark.timeout(120)

POD_TYPE = "io.kubernetes.cri.container-type"
POD_SANDBOX = "io.kubernetes.cri.sandbox-id"
"""containerd's CRI sandbox annotations (a pod's sandbox, or a container naming it)."""


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox root file system, extracted once for the module."""
    directory = tmp_path_factory.mktemp("busybox") / "rootfs"
    directory.mkdir()
    extract_layer(io.BytesIO(build_layer()), directory, layer="busybox")
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """hcsoci-runc's state root for one test; afterwards nothing may be left in it."""
    path = tmp_path / "state"
    yield path
    left = runtime_leftovers(path)
    if left:  # a failed test: release it all (stand-ins, controllers, QEMU, gc), then say so
        release_runtime_leftovers(path)
    for name in os.listdir(path / "runc") if (path / "runc").is_dir() else []:
        subprocess.run(["runc", "--root", str(path / "runc"), "delete", "--force", name])
    assert left == [], left


def make_bundle(directory: Path, rootfs: Path, args: list[str], **process: object) -> Path:
    """A bundle in ``directory`` whose spec (``runc spec``'s) runs ``args`` on ``rootfs``."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["runc", "spec", "--bundle", str(directory)], check=True)
    config = json.loads((directory / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["process"].update({"terminal": False, "args": args, **process})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def runtime(
    root: Path,
    *args: str,
    input: bytes | None = None,
    program: str = RUNTIME,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run hcsoci-runc with ``--root root``.

    Its stdout and stderr are files, not pipes: a created container's init
    holds the descriptors it was given (they become its stdio), so a pipe
    would not reach end of file before the container ends.
    """
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        result = subprocess.run(
            [program, "--root", str(root), *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            timeout=60,
            check=False,
            env=env,
        )
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(
            result.args, result.returncode, stdout.read(), stderr.read()
        )


def state_of(root: Path, container_id: str) -> dict[str, object]:
    result = runtime(root, "state", container_id)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert isinstance(state, dict)
    return state


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """Exit status 1 and one line on stderr holding ``words``; never a traceback."""
    assert result.returncode == 1, result
    text = result.stderr.decode()
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    for word in words:
        assert word in text, text
    return text.strip()


@contextlib.contextmanager
def console_socket(path: str, timeout: float = 60) -> Iterator[list[int]]:
    """A ``--console-socket`` listening at ``path``, as an engine's: yields the list that
    receives the pty master sent over it (SCM_RIGHTS) by the time the block ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(timeout)
    received: list[int] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                _, fds, _, _ = socket.recv_fds(connection, 1024, 1)
                received.extend(fds)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        thread.join(timeout=5)  # the runtime returned: what it sent is there
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes an accept nobody answered
        thread.join(timeout=timeout)
        listener.close()


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_version() -> None:
    result = subprocess.run([RUNTIME, "--version"], capture_output=True, check=True)
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("hcsoci-runc version ")
    assert lines[1].startswith("commit: ")
    assert lines[2].startswith("spec: 1.0")


class PlantedEnvironment(NamedTuple):
    """An engine environment whose PYTHON* variables point at code that leaves a canary."""

    env: dict[str, str]
    canary: Path


@pytest.fixture
def planted(tmp_path: Path) -> PlantedEnvironment:
    directory = tmp_path / "planted"
    (directory / "hcsoci").mkdir(parents=True)
    canary = tmp_path / "canary"
    code = f"open({str(canary)!r}, 'w').close()\n"
    (directory / "hcsoci" / "__init__.py").write_text(code)
    (directory / "sitecustomize.py").write_text(code)
    (directory / "usercustomize.py").write_text(code)
    env = {
        **os.environ,
        "PYTHONPATH": str(directory),
        "PYTHONSTARTUP": str(directory / "sitecustomize.py"),
        "PYTHONINSPECT": "1",
        "PYTHONUSERBASE": str(directory),
    }
    return PlantedEnvironment(env, canary)


@pytest.mark.parametrize("program", [RUNTIME, RUNTIME_VM])
def test_the_engines_python_environment_reaches_nothing(
    planted: PlantedEnvironment, program: str
) -> None:
    """The installed runtime is ``python -IS``: an engine's PYTHONPATH, PYTHONSTARTUP or
    PYTHONINSPECT chooses nothing a root process imports or runs (the VM controller and
    stand-ins it starts: see test_vm_lifecycle)."""
    result = subprocess.run(
        [program, "--version"],
        env=planted.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"hcsoci-runc version "), result.stdout
    assert not planted.canary.exists()


def test_lifecycle(root: Path, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sleep", "300"])
    pid_file = tmp_path / "init.pid"
    created = runtime(root, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1")
    assert created.returncode == 0, created.stderr
    pid = int(pid_file.read_text())
    assert state_of(root, "c1")["status"] == "created"
    assert state_of(root, "c1")["pid"] == pid

    row = container_table.get(Store(root), "c1")
    assert row is not None
    assert (row.owner, row.state, row.init_pid, row.bundle) == (
        "hcsoci-runc",
        "created",
        pid,
        str(bundle),
    )
    assert row.controller_pid == os.getpid()  # the caller (an engine's shim) controls it

    assert runtime(root, "start", "c1").returncode == 0
    assert state_of(root, "c1")["status"] == "running"
    assert json.loads(runtime(root, "ps", "--format", "json", "c1").stdout) == [pid]
    listed = json.loads(runtime(root, "list", "--format", "json").stdout)
    assert [entry["id"] for entry in listed] == ["c1"]

    assert runtime(root, "pause", "c1").returncode == 0
    assert state_of(root, "c1")["status"] == "paused"
    assert runtime(root, "resume", "c1").returncode == 0

    foreground = runtime(root, "exec", "c1", "sh", "-c", "echo from exec; exit 5")
    assert (foreground.returncode, foreground.stdout) == (5, b"from exec\n")
    process = tmp_path / "process.json"
    spec = {
        "args": ["sleep", "200"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin"],
    }
    process.write_text(json.dumps(spec))
    exec_pid_file = tmp_path / "exec.pid"
    detached = runtime(
        root, "exec", "--process", str(process), "--detach", "--pid-file", str(exec_pid_file), "c1"
    )
    assert detached.returncode == 0, detached.stderr
    exec_pid = int(exec_pid_file.read_text())
    assert sorted(json.loads(runtime(root, "ps", "--format", "json", "c1").stdout)) == sorted(
        [pid, exec_pid]
    )

    update = runtime(root, "update", "--resources", "-", "c1", input=b'{"pids": {"limit": 99}}')
    assert update.returncode == 0, update.stderr
    events = runtime(root, "events", "--stats", "c1")
    assert json.loads(events.stdout)["type"] == "stats"

    refused = runtime(root, "delete", "c1")  # running: runc refuses, nothing is dropped
    assert refused.returncode == 1
    assert container_table.get(Store(root), "c1") is not None

    assert runtime(root, "kill", "--all", "c1", "9").returncode == 0
    deadline = time.monotonic() + 10
    while state_of(root, "c1")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime(root, "delete", "c1").returncode == 0
    assert container_table.get(Store(root), "c1") is None
    # containerd's shim follows with a forced delete of what is gone: it succeeds.
    assert runtime(root, "delete", "--force", "c1").returncode == 0
    assert_one_line_error(runtime(root, "delete", "c1"), "container does not exist")


def test_run_foreground_exit_status(root: Path, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", "echo hello; exit 3"])
    result = runtime(root, "run", "--bundle", str(bundle), "r1")
    assert (result.returncode, result.stdout) == (3, b"hello\n")
    assert result.stderr == b""  # the container's own failure: nothing of ours added
    (bundle / "config.json").write_text("{not json")
    result = runtime(root, "run", "--bundle", str(bundle), "r2")
    assert result.returncode == 1, result
    assert b"config.json is not valid JSON" in result.stderr.splitlines()[-1], result


_AS_FD_3 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.argv[2], sys.argv[2:])"
"""Run argv[2:] with the descriptor argv[1] as its fd 3 (as an engine passing one extra fd)."""


def test_preserve_fds_reach_the_container(root: Path, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", "cat <&3"])
    reader, writer = os.pipe()
    os.write(writer, b"through fd 3")
    os.close(writer)
    run = [RUNTIME, "--root", str(root), "run", "--preserve-fds", "1", "--bundle", str(bundle)]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _AS_FD_3, str(reader), *run, "p1"],
            pass_fds=(reader,),
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(reader)
    assert (result.returncode, result.stdout) == (0, b"through fd 3"), result.stderr


def test_console_socket_gets_the_pty(root: Path, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", "tty; exit 0"], terminal=True)
    path = str(tmp_path / "console.sock")
    with console_socket(path) as received:
        args = ["create", "--bundle", str(bundle), "--console-socket", path]
        created = runtime(root, *args, "--pid-file", str(tmp_path / "pid"), "t1")
    assert created.returncode == 0, created.stderr
    assert len(received) == 1
    master = received[0]
    try:
        assert runtime(root, "start", "t1").returncode == 0
        output = b""
        while b"\n" not in output:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        assert output.startswith(b"/dev/pts/"), output
    finally:
        os.close(master)
    deadline = time.monotonic() + 10
    while state_of(root, "t1")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime(root, "delete", "t1").returncode == 0


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no config.json", ["config.json does not exist"]),
        ("not JSON", ["config.json is not valid JSON", "line 1 column 2"]),
        ("not an object", ["config.json is not a JSON object"]),
        ("runc refuses the spec", ["/no/such/program", "no such file or directory"]),
        ("console socket refuses", ["nobody-listens.sock", "connect"]),
        ("pid file in a missing directory", ["pid file", "does not exist"]),
        ("bad isolation annotation", ["io.hcsoci.isolation", "'both'"]),
        ("bad isolation annotation, escaped", ["io.hcsoci.isolation", "'both'"]),
        ("vm console socket refuses", ["nobody-listens.sock", "console socket"]),
        ("vm annotation, no root.path", ["root.path"]),
        ("bad id", ["container id", "is not a valid id"]),
        ("unknown sandbox", ["io.kubernetes.cri.sandbox-id", "'nosuch'", "no such sandbox"]),
        ("hostile sandbox id", ["io.kubernetes.cri-o.SandboxID", "is not a valid id"]),
        ("hostile sandbox id, escaped", ["io.kubernetes.cri-o.SandboxID", "is not a valid id"]),
        ("bad pod role", ["io.kubernetes.cri.container-type", "'pause'", "not a pod role"]),
        ("sandbox of another id", ["io.kubernetes.cri.sandbox-id", "own id"]),
        ("pod container, no sandbox", ["io.kubernetes.cri.sandbox-id", "missing"]),
    ],
)
def test_bad_create_leaves_nothing(
    root: Path, rootfs: Path, tmp_path: Path, case: str, words: list[str]
) -> None:
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["true"])
    config = json.loads((bundle / "config.json").read_text())
    extra: list[str] = []
    global_flags: list[str] = []
    container_id = "bad1"
    if case == "no config.json":
        (bundle / "config.json").unlink()
    elif case == "not JSON":
        (bundle / "config.json").write_text("{not json")
    elif case == "not an object":
        (bundle / "config.json").write_text("[]")
    elif case == "runc refuses the spec":
        config["process"]["args"] = ["/no/such/program"]
    elif case == "console socket refuses":
        config["process"]["terminal"] = True
        extra = ["--console-socket", str(tmp_path / "nobody-listens.sock")]
    elif case == "pid file in a missing directory":
        extra = ["--pid-file", str(tmp_path / "missing" / "init.pid")]
    elif case == "vm console socket refuses":
        global_flags = ["--isolation", "vm"]
        config["process"]["terminal"] = True
        extra = ["--console-socket", str(tmp_path / "nobody-listens.sock")]
    elif case == "vm annotation, no root.path":
        config["annotations"] = {"io.hcsoci.isolation": "vm"}
        del config["root"]
    elif case.startswith("bad isolation annotation"):
        config["annotations"] = {"io.hcsoci.isolation": "both"}
    elif case == "bad id":
        container_id = "../escape"
    elif case == "unknown sandbox":
        global_flags = ["--isolation", "vm"]
        config["annotations"] = {POD_TYPE: "container", POD_SANDBOX: "nosuch"}
    elif case.startswith("hostile sandbox id"):  # any isolation: checked before it names a path
        config["annotations"] = {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.SandboxID": "../../etc",
        }
    elif case == "bad pod role":
        global_flags = ["--isolation", "vm"]
        config["annotations"] = {POD_TYPE: "pause", POD_SANDBOX: "bad1"}
    elif case == "sandbox of another id":
        global_flags = ["--isolation", "vm"]
        config["annotations"] = {POD_TYPE: "sandbox", POD_SANDBOX: "other"}
    elif case == "pod container, no sandbox":
        global_flags = ["--isolation", "vm"]
        config["annotations"] = {POD_TYPE: "container"}
    if case not in ("no config.json", "not JSON", "not an object"):
        text = json.dumps(config)
        if case.endswith(", escaped"):  # the keys spelled with JSON escapes are the same keys
            text = text.replace(".isolation", "\\u002eisolation").replace(
                "ContainerType", "Container\\u0054ype"
            )
        (bundle / "config.json").write_text(text)
    log = tmp_path / "log.json"
    result = runtime(
        root,
        "--log", str(log), "--log-format", "json", *global_flags,
        "create", "--bundle", str(bundle), *extra, container_id,
    )  # fmt: skip
    if case == "runc refuses the spec":
        # runc ran the create: its own one-line message, on stderr and in the log
        assert result.returncode == 1, result
        assert b"Traceback" not in result.stderr
    elif case == "not JSON":
        # runc's line ("invalid character"), then the one naming the file, last: engines
        # show the last error of --log
        assert result.returncode == 1, result
        lines = result.stderr.decode().splitlines()
        assert "invalid character" in lines[0] and all(w in lines[-1] for w in words), lines
    else:
        assert_one_line_error(result, *words)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[-1]["level"] == "error"
    assert all(word in records[-1]["msg"] for word in words), records
    # the root fixture checks nothing is left: no runc state, marker, row or journal


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["state", "nosuch"], ["container does not exist"]),
        (["kill", "nosuch", "9"], ["container does not exist"]),
        (["delete", "nosuch"], ["container does not exist: nosuch"]),
        (["start", "-x", "c"], ["flag provided but not defined: -x"]),
        (["bogus"], ["no such command: bogus"]),
        (["--isolation", "both", "state", "c"], ["--isolation", "'both'"]),
        (["exec", "--process", "/no/such/file", "c"], ["process file"]),
        (["kill"], ['"kill" requires a container id']),
    ],
)
def test_bad_calls_are_one_line(root: Path, args: list[str], words: list[str]) -> None:
    assert_one_line_error(runtime(root, *args), *words)


def test_debug_adds_the_traceback(root: Path) -> None:
    result = runtime(root, "--debug", "delete", "nosuch")
    assert result.returncode == 1
    assert b"Traceback" in result.stderr
    assert b"container does not exist: nosuch" in result.stderr


def test_gc_releases_a_container_whose_engine_died(
    root: Path, rootfs: Path, tmp_path: Path
) -> None:
    """The controller is the caller; when it is gone, ``hcsoci gc`` releases the container."""
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sleep", "300"])
    pid_file = tmp_path / "init.pid"
    # A shell plays the engine's shim: it calls the runtime, then dies.
    subprocess.run(
        [
            "sh",
            "-c",
            f'"$0" --root {root} create --bundle {bundle} --pid-file {pid_file} g1',
            RUNTIME,
        ],
        check=True,
    )
    init = int(pid_file.read_text())
    assert runtime(root, "start", "g1").returncode == 0
    store = Store(root)
    assert collect(context.background(), store) == ["g1"]
    assert container_table.get(store, "g1") is None
    assert not (root / "runc" / "g1").exists()
    deadline = time.monotonic() + 10
    while running(init) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(init)
    # the marker gc did not know of is stale: a fresh one is refused (it could be a
    # create in flight), an old one taken over, and a forced delete clears it.
    assert_one_line_error(runtime(root, "create", "--bundle", str(bundle), "g1"), "exists")
    old = time.time() - 60
    os.utime(root / "hcsoci-runc" / "g1", (old, old))
    again = runtime(root, "create", "--bundle", str(bundle), "g1")
    assert again.returncode == 0, again.stderr
    assert runtime(root, "delete", "--force", "g1").returncode == 0
    subprocess.run(["sh", "-c", f'"$0" --root {root} create --bundle {bundle} g2', RUNTIME])
    assert collect(context.background(), store) == ["g2"]
    assert runtime(root, "delete", "--force", "g2").returncode == 0
    assert not (root / "hcsoci-runc" / "g2").exists()


def test_spec_and_features(tmp_path: Path) -> None:
    assert subprocess.run([RUNTIME, "spec", "--bundle", str(tmp_path)], check=False).returncode == 0
    assert json.loads((tmp_path / "config.json").read_text())["ociVersion"]
    features = subprocess.run([RUNTIME, "features"], capture_output=True, check=True)
    assert "ociVersionMax" in json.loads(features.stdout)


def test_engine_path_imports_stay_lean(root: Path, rootfs: Path, tmp_path: Path) -> None:
    """No click, rich, msgspec or pyroute2 on any call; no store on the calls that need none."""
    heavy = ("click", "rich", "msgspec", "pyroute2", "hcsoci.oci", "hcsoci.cmd")
    probe = (
        "import sys\n"
        "from hcsoci.runtime_cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        f"print(sorted(m for m in {(*heavy, 'sqlite3', 'hcsoci.store')!r} if m in sys.modules))\n"
    )
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["true"])

    def imported(*args: str) -> list[str]:
        with tempfile.TemporaryFile() as output:  # not a pipe: a created init holds it
            subprocess.run(
                [sys.executable, "-c", probe, "--root", str(root), *args],
                stdout=output,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            output.seek(0)
            last = output.read().decode().strip().splitlines()[-1]
        loaded = json.loads(last.replace("'", '"'))
        assert isinstance(loaded, list)
        return loaded

    assert imported("delete", "--force", "nosuch") == []
    assert imported("kill", "../bad", "9") == []
    created = imported("create", "--bundle", str(bundle), "lean1")
    assert [m for m in created if m in heavy] == []
    assert imported("delete", "--force", "lean1") == ["hcsoci.store", "sqlite3"]


def test_signal_to_a_foreground_run_reaches_the_container(
    root: Path, rootfs: Path, tmp_path: Path
) -> None:
    script = "trap 'echo got TERM; exit 9' TERM; echo ready; while :; do sleep 0.1; done"
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", script])
    process = subprocess.Popen(
        [RUNTIME, "--root", str(root), "run", "--bundle", str(bundle), "s1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 9
    assert process.stdout.read() == b"got TERM\n"
    process.stdout.close()


def test_no_runc_under_our_name(tmp_path: Path) -> None:
    """hcsoci-runc named ``runc`` first on PATH still finds the real runc, not itself."""
    (tmp_path / "runc").symlink_to(RUNTIME)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        [str(tmp_path / "runc"), "--root", str(tmp_path / "state"), "list"],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == [b"ID", b"PID"]
    shutil.rmtree(tmp_path / "state", ignore_errors=True)


@given(st.text(max_size=140) | st.from_regex(ID_PATTERN, fullmatch=True))
def test_the_id_rule_without_re_is_the_pattern(value: str) -> None:
    """hcsoci.ids checks without ``re`` (for start-up); it must accept exactly ID_PATTERN."""
    assert is_valid_id(value) == bool(ID_PATTERN.fullmatch(value))
    if not is_valid_id(value):
        with pytest.raises(InvalidArgumentError):
            check_id(value, "container id")


# -- VM isolation: the container in a utility VM, a stand-in on the host ---------------------


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This process adopts orphans, as an engine's shim does: stand-ins become our children.

    Only for the test: afterwards the adopted processes that ended (the VM
    controllers) are reaped and orphans go to init again, as other modules expect.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    try:
        yield
    finally:
        assert libc.prctl(36, 0, 0, 0, 0) == 0
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass


def reap(pid: int, timeout: float = 60) -> int:
    """Wait for the (adopted) stand-in ``pid``: its exit status, 128 + N for signal N."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
        time.sleep(0.05)
    raise AssertionError(f"stand-in {pid} did not exit")


def vm_rows(root: Path) -> list[str]:
    """The utility VMs recorded under ``root``."""
    return [row["id"] for row in Store(root).query("SELECT id FROM vms")]


def guest_commands(root: Path, container_id: str) -> str:
    """``ps`` (text) of a VM container: the guest processes' command lines."""
    result = runtime(root, "ps", container_id)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def wait_until(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)
    assert condition(), condition  # type: ignore[operator]


@pytest.mark.timeout(240)
def test_vm_lifecycle(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None, planted: PlantedEnvironment
) -> None:
    """create/start/state/ps/list/exec/kill/delete of a VM container over runc-style calls.

    The engine's environment plants Python code: the VM controller and the stand-ins
    (root processes the runtime starts) must import none of it.
    """
    bundle = make_bundle(
        tmp_path / "bundle", rootfs, ["sh", "-c", "read x; echo got $x; exec sleep 300"]
    )
    pid_file = tmp_path / "init.pid"
    stdin_r, stdin_w = os.pipe()
    out = tmp_path / "out"
    with out.open("wb") as stdout, tempfile.TemporaryFile() as stderr:
        created = subprocess.run(
            [RUNTIME, "--root", str(root), "--isolation", "vm", "create",
             "--bundle", str(bundle), "--pid-file", str(pid_file), "v1"],
            stdin=stdin_r, stdout=stdout, stderr=stderr, timeout=120, check=False,
            env=planted.env,
        )  # fmt: skip
        stderr.seek(0)
        assert created.returncode == 0, stderr.read()
    os.close(stdin_r)
    pid = int(pid_file.read_text())
    state = state_of(root, "v1")
    assert (state["status"], state["pid"]) == ("created", pid)
    row = container_table.get(Store(root), "v1")
    assert row is not None and row.host in vm_rows(root)  # the container is in the VM
    assert_one_line_error(runtime(root, "exec", "v1", "true"), "not yet started")

    started = runtime(root, "start", "v1")
    assert started.returncode == 0, started.stderr
    assert state_of(root, "v1")["status"] == "running"
    assert_one_line_error(runtime(root, "start", "v1"), "cannot start a container that has running")
    os.write(stdin_w, b"hello\n")
    os.close(stdin_w)
    wait_until(lambda: out.read_bytes() == b"got hello\n")
    assert json.loads(runtime(root, "ps", "--format", "json", "v1").stdout) == [pid]
    listed = json.loads(runtime(root, "list", "--format", "json").stdout)
    assert [(entry["id"], entry["status"]) for entry in listed] == [("v1", "running")]

    foreground = runtime(
        root,
        "exec",
        "v1",
        "sh",
        "-c",
        "echo from exec; cat /proc/1/cmdline; exit 5",
        env=planted.env,
    )
    assert (foreground.returncode, foreground.stdout) == (5, b"from exec\nsleep\x00300\x00"), (
        foreground
    )

    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sleep", "222"], "cwd": "/", "env": ["PATH=/bin"]}))
    exec_pid_file = tmp_path / "exec.pid"
    detached = runtime(
        root,
        "exec",
        "--process",
        str(process),
        "--detach",
        "--pid-file",
        str(exec_pid_file),
        "v1",
        env=planted.env,
    )
    assert detached.returncode == 0, detached.stderr
    exec_pid = int(exec_pid_file.read_text())
    assert exec_pid != pid and running(exec_pid)
    wait_until(lambda: "sleep 222" in guest_commands(root, "v1"))
    # SIGKILL of an exec's stand-in (uncatchable): the controller kills the guest process.
    os.kill(exec_pid, signal.SIGKILL)
    assert reap(exec_pid) == 128 + signal.SIGKILL
    wait_until(lambda: "sleep 222" not in guest_commands(root, "v1"))

    assert_one_line_error(runtime(root, "delete", "v1"), "not stopped")
    assert_one_line_error(runtime(root, "events", "v1"), "not supported")
    assert runtime(root, "kill", "v1", "KILL").returncode == 0
    assert reap(pid) == 128 + signal.SIGKILL  # the guest init's status, through the stand-in
    assert state_of(root, "v1")["status"] == "stopped"
    assert runtime(root, "delete", "v1").returncode == 0
    assert vm_rows(root) == []  # the VM ended with its last container
    assert runtime(root, "delete", "--force", "v1").returncode == 0
    assert_one_line_error(runtime(root, "state", "v1"), "container does not exist")
    assert not planted.canary.exists()


@pytest.mark.timeout(240)
def test_vm_console_socket_and_exit_code(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None
) -> None:
    """A terminal: the host pty's master over --console-socket, the guest's exit code."""
    script = "tty; stty size; read line; echo typed $line; exit 3"
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["sh", "-c", script], terminal=True)
    path = str(tmp_path / "console.sock")
    pid_file = tmp_path / "pid"
    with console_socket(path) as received:
        created = runtime(
            root, "--isolation", "vm", "create", "--bundle", str(bundle),
            "--console-socket", path, "--pid-file", str(pid_file), "t1",
        )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert len(received) == 1
    master = received[0]
    pid = int(pid_file.read_text())
    import fcntl
    import struct
    import termios

    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    output = b""
    try:
        assert runtime(root, "start", "t1").returncode == 0
        typed = False
        while b"typed abc" not in output:
            if not typed and b"33 111\r\n" in output:
                os.write(master, b"abc\r")  # after the prompt: its echo cannot come first
                typed = True
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    assert output.startswith(b"/dev/pts/"), output
    assert b"33 111" in output, output
    assert reap(pid) == 3
    assert runtime(root, "delete", "t1").returncode == 0
    assert vm_rows(root) == []


@pytest.mark.timeout(240)
def test_vm_controller_that_died(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller SIGKILLed: start fails in one line, the stand-in ends; gc reclaims."""
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["true"])
    pid_file = tmp_path / "pid"
    created = runtime(
        root,
        "--isolation",
        "vm",
        "create",
        "--bundle",
        str(bundle),
        "--pid-file",
        str(pid_file),
        "d1",
    )
    assert created.returncode == 0, created.stderr
    pid = int(pid_file.read_text())
    controller = Store(root).query("SELECT controller_pid FROM vms")[0]["controller_pid"]
    os.kill(controller, signal.SIGKILL)
    reap(controller)  # adopted by us, the subreaper (as by an engine's shim): reaped by us
    assert_one_line_error(runtime(root, "start", "d1"), "controller", "hcsoci gc")
    assert reap(pid) == 255
    assert state_of(root, "d1")["status"] == "stopped"
    monkeypatch.setenv("HCSOCI_ROOT", str(root))
    assert collect(context.background(), Store(root)) == ["d1"]
    from hcsoci.uvm.vm import reap_dead_vms

    reap_dead_vms(Store(root))
    assert vm_rows(root) == []
    assert runtime(root, "delete", "d1").returncode == 0


# -- OCI hooks in VM mode: run on the host around the VM, startContainer in the guest ------------

HOST_HOOKS = ("prestart", "createRuntime", "createContainer", "poststart", "poststop")


def recording_hook(directory: Path, kind: str, **fields: object) -> dict[str, object]:
    """A hook that writes its stdin to ``directory/KIND.json`` and its argv and env beside it."""
    to = f'{directory}/"$1"'
    script = f'cat > {to}.json; tr "\\0" " " < /proc/$$/cmdline > {to}.argv; env > {to}.env'
    hook: dict[str, object] = {
        "path": "/bin/sh",
        "args": ["hook-argv0", "-c", script, "named", kind],
    }
    return {**hook, **fields}


def creating_state(container_id: str, pid: int, bundle: Path) -> dict[str, object]:
    """The state a create hook of a ``hooked_bundle`` container gets on its stdin."""
    return {
        "ociVersion": "1.0.2-dev",
        "id": container_id,
        "status": "creating",
        "pid": pid,
        "bundle": str(bundle),
        "annotations": {"io.hcsoci.test": "hooks"},
    }


def hooked_bundle(
    directory: Path, rootfs: Path, args: list[str], hooks: Mapping[str, object]
) -> Path:
    bundle = make_bundle(directory, rootfs, args)
    config = json.loads((bundle / "config.json").read_text())
    config["hooks"] = hooks
    config["annotations"] = {"io.hcsoci.test": "hooks"}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def hook_state(directory: Path, kind: str) -> dict[str, object]:
    state = json.loads((directory / f"{kind}.json").read_text())
    assert isinstance(state, dict)
    return state


@pytest.mark.timeout(300)
def test_vm_hooks_run_on_the_host_with_the_stand_ins_state(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None
) -> None:
    """prestart, createRuntime, createContainer at create, poststart after start, poststop
    after delete: on the host, runc's state on stdin with the stand-in's pid, each hook's
    args, env and timeout; startContainer in the guest, in the container."""
    seen = tmp_path / "seen"
    seen.mkdir()
    hooks: dict[str, object] = {
        kind: [
            recording_hook(seen, kind, env=[f"HOOK_KIND={kind}", "PATH=/usr/bin:/bin"], timeout=30)
        ]
        for kind in HOST_HOOKS
    }
    hooks["prestart"] = [recording_hook(seen, "prestart")]  # no env: the runtime's own
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /dev/shm/started"]}]
    bundle = hooked_bundle(
        tmp_path / "bundle", rootfs, ["sh", "-c", "cat /dev/shm/started; exec sleep 300"], hooks
    )
    pid_file = tmp_path / "pid"
    out = tmp_path / "out"
    created = create_vm(root, bundle, "h1", pid_file, out, "--isolation", "vm")
    assert created.returncode == 0, created.stderr
    pid = int(pid_file.read_text())
    expected = creating_state("h1", pid, bundle)
    for kind in ("prestart", "createRuntime", "createContainer"):
        assert hook_state(seen, kind) == expected, kind
        argv = (seen / f"{kind}.argv").read_text()  # args as given, args[0] the argv[0]
        assert argv.startswith("hook-argv0 -c ") and argv.endswith(f" named {kind} "), argv
    assert not (seen / "poststart.json").exists()
    env = (seen / "createRuntime.env").read_text().splitlines()
    assert "HOOK_KIND=createRuntime" in env and not any(e.startswith("HOME=") for e in env), env
    assert any(e.startswith("HCSOCI_ROOT=") for e in (seen / "prestart.env").read_text().split())
    # The stand-in is in the new network namespace the spec asks for, not the host's.
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")

    assert runtime(root, "start", "h1").returncode == 0
    assert hook_state(seen, "poststart") == {**expected, "status": "running"}
    wait_until(lambda: out.read_bytes() != b"")
    in_guest = json.loads(out.read_bytes())  # the startContainer hook's stdin, in the guest
    assert (in_guest["id"], in_guest["status"]) == ("h1", "created"), in_guest
    assert in_guest["pid"] != pid  # the guest's runc's own view, not the stand-in

    assert runtime(root, "kill", "h1", "KILL").returncode == 0
    assert reap(pid) == 128 + signal.SIGKILL
    assert not (seen / "poststop.json").exists()
    assert runtime(root, "delete", "h1").returncode == 0
    stopped = {key: value for key, value in expected.items() if key != "pid"}
    assert hook_state(seen, "poststop") == {**stopped, "status": "stopped"}
    assert vm_rows(root) == []


@pytest.mark.timeout(300)
def test_vm_failing_create_hook_fails_create_and_leaves_nothing(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None
) -> None:
    """A createRuntime hook that fails (or runs past its timeout) fails create in one line
    with runc's exit status; the container, its stand-in and its VM are gone, poststop ran."""
    seen = tmp_path / "seen"
    seen.mkdir()
    cases = {
        "exit": ({"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]},
                 ["createRuntime hook #0", "/bin/sh", "exit status 3", "hook-said-no"]),
        "timeout": ({"path": "/bin/sleep", "args": ["sleep", "60"], "timeout": 1},
                    ["createRuntime hook #0", "ran past specified timeout of 1.0s"]),
    }  # fmt: skip
    for name, (failing, words) in cases.items():
        hooks = {
            "prestart": [recording_hook(seen, "prestart")],
            "createRuntime": [failing],
            "createContainer": [recording_hook(seen, "createContainer")],
            "poststop": [recording_hook(seen, "poststop")],
        }
        bundle = hooked_bundle(tmp_path / name, rootfs, ["true"], hooks)
        pid_file = tmp_path / f"{name}.pid"
        created = create_vm(root, bundle, f"f-{name}", pid_file, None, "--isolation", "vm")
        assert_one_line_error(created, *words)
        assert not pid_file.exists()
        standin = int(hook_state(seen, "prestart")["pid"])  # type: ignore[call-overload]
        assert not os.path.exists(f"/proc/{standin}")  # killed and reaped by create
        assert not (seen / "createContainer.json").exists()  # the hooks stop at the first failure
        assert hook_state(seen, "poststop")["status"] == "stopped"
        assert vm_rows(root) == []
        assert runtime_leftovers(root) == []
        for kind in ("prestart", "poststop"):
            (seen / f"{kind}.json").unlink()


@pytest.mark.parametrize(
    ("hooks", "words"),
    [
        ({"prestart": [{"path": "relative/hook"}]}, ["$.hooks.prestart[0].path", "relative/hook"]),
        ({"poststop": [{"path": "/bin/true", "timeout": 0}]}, ["$.hooks.poststop[0].timeout", "0"]),
        ({"createRuntime": [{"path": "/bin/true", "env": ["NOEQUALS"]}]},
         ["$.hooks.createRuntime[0].env[0]", "NOEQUALS"]),
    ],
)  # fmt: skip
def test_vm_bad_hooks_are_one_line_and_make_nothing(
    root: Path, rootfs: Path, tmp_path: Path, hooks: dict[str, object], words: list[str]
) -> None:
    bundle = hooked_bundle(tmp_path / "bundle", rootfs, ["true"], hooks)
    result = create_vm(root, bundle, "bad1", tmp_path / "pid", None, "--isolation", "vm")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "pid").exists()
    assert not (root / "state.db").exists() or vm_rows(root) == []


@pytest.mark.timeout(240)
def test_vm_standin_network_namespace_path_checked(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None
) -> None:
    """A network namespace path the stand-in cannot join fails create in one line naming
    the field and value, leaving nothing (a missing one before any VM is made)."""
    not_a_namespace = tmp_path / "plain-file"
    not_a_namespace.write_text("")
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(not_a_namespace): "is not a network namespace",
    }
    for number, (path, words) in enumerate(cases.items()):
        bundle = pod_bundle(tmp_path / f"b{number}", rootfs, ["true"], {}, {"network": path})
        namespaces = json.loads((bundle / "config.json").read_text())["linux"]["namespaces"]
        index = [n["type"] for n in namespaces].index("network")
        result = create_vm(root, bundle, f"n{number}", tmp_path / "pid", None, "--isolation", "vm")
        assert_one_line_error(result, f"linux.namespaces[{index}].path", repr(path), words)
        assert not (tmp_path / "pid").exists()
        assert not (root / "state.db").exists() or vm_rows(root) == []


def test_process_hooks_get_the_same_state_from_runc(
    root: Path, rootfs: Path, tmp_path: Path
) -> None:
    """The same hooks under process isolation: runc runs them, with the same state fields."""
    seen = tmp_path / "seen"
    seen.mkdir()
    hooks = {
        kind: [recording_hook(seen, kind)] for kind in ("prestart", "createRuntime", "poststop")
    }
    bundle = hooked_bundle(tmp_path / "bundle", rootfs, ["sleep", "300"], hooks)
    pid_file = tmp_path / "pid"
    created = runtime(root, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), "p1")
    assert created.returncode == 0, created.stderr
    pid = int(pid_file.read_text())
    expected = creating_state("p1", pid, bundle)
    assert hook_state(seen, "prestart") == hook_state(seen, "createRuntime") == expected
    assert runtime(root, "delete", "--force", "p1").returncode == 0
    stopped = {key: value for key, value in expected.items() if key != "pid"}
    assert hook_state(seen, "poststop") == {**stopped, "status": "stopped"}


# -- pods: a sandbox and its containers, as containerd's CRI creates them ---------------------


def pod_bundle(
    directory: Path,
    rootfs: Path,
    args: list[str],
    annotations: dict[str, str],
    join: dict[str, str] | None = None,
) -> Path:
    """A bundle with CRI annotations; ``join`` maps namespace types to the paths the engine
    gives them (the sandbox's ``/proc/PID/ns/...`` on the host)."""
    bundle = make_bundle(directory, rootfs, args)
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"] = annotations
    for namespace in config["linux"]["namespaces"]:
        if namespace["type"] in (join or {}):
            namespace["path"] = (join or {})[namespace["type"]]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def create_vm(
    root: Path,
    bundle: Path,
    container_id: str,
    pid_file: Path,
    stdout: Path | None = None,
    *flags: str,
) -> subprocess.CompletedProcess[bytes]:
    """``create`` as a shim calls it; the container's stdout goes to ``stdout`` (or nowhere)."""
    with open(stdout or os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
        result = subprocess.run(
            [RUNTIME, "--root", str(root), *flags, "create", "--bundle", str(bundle),
             "--pid-file", str(pid_file), container_id],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=120, check=False,
        )  # fmt: skip
        err.seek(0)
        return subprocess.CompletedProcess(result.args, result.returncode, b"", err.read())


def guest_facts(root: Path, container_id: str) -> list[str]:
    """The guest's boot id and the container's network and ipc namespaces, from an exec."""
    script = (
        "cat /proc/sys/kernel/random/boot_id; for n in net ipc; do readlink /proc/self/ns/$n; done"
    )
    result = runtime(root, "exec", container_id, "sh", "-c", script)
    assert result.returncode == 0, result
    lines = result.stdout.decode().split()
    assert len(lines) == 3 and lines[1].startswith("net:["), lines
    return lines


@pytest.mark.timeout(300)
def test_vm_pod_shares_one_vm(root: Path, rootfs: Path, tmp_path: Path, subreaper: None) -> None:
    """A sandbox and two containers of its pod: one VM, one network namespace; pause, resume
    and update in the guest; the VM goes with the sandbox, killing what is left in it."""
    sandbox = pod_bundle(
        tmp_path / "sandbox", rootfs, ["sleep", "600"], {POD_TYPE: "sandbox", POD_SANDBOX: "pod1"}
    )
    created = create_vm(root, sandbox, "pod1", tmp_path / "pod1.pid", None, "--isolation", "vm")
    assert created.returncode == 0, created.stderr
    sandbox_pid = int((tmp_path / "pod1.pid").read_text())
    assert runtime(root, "start", "pod1").returncode == 0
    member = {POD_TYPE: "container", POD_SANDBOX: "pod1"}
    # c1 as containerd's CRI makes a pod's container: network, ipc and uts are the sandbox's.
    shared = {kind: f"/proc/{sandbox_pid}/ns/{name}" for kind, name in
              (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))}  # fmt: skip
    c1 = pod_bundle(tmp_path / "c1", rootfs, ["sleep", "600"], member, shared)
    # No --isolation: a pod's container follows its sandbox into the VM.
    created = create_vm(root, c1, "c1", tmp_path / "c1.pid")
    assert created.returncode == 0, created.stderr
    counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done"
    c2 = pod_bundle(tmp_path / "c2", rootfs, ["sh", "-c", counter], member)
    out = tmp_path / "c2.out"
    created = create_vm(root, c2, "c2", tmp_path / "c2.pid", out, "--isolation", "vm")
    assert created.returncode == 0, created.stderr
    c2_pid = int((tmp_path / "c2.pid").read_text())
    for container_id in ("c1", "c2"):
        assert runtime(root, "start", container_id).returncode == 0
    assert_one_line_error(
        runtime(root, "--isolation", "process", "create", "--bundle", str(c1), "c3"),
        POD_SANDBOX, "'pod1'", "cannot be process-isolated",
    )  # fmt: skip

    # One VM: one row, the same guest boot, every container on it.
    hosts = {container_table.get(Store(root), cid).host for cid in ("pod1", "c1", "c2")}  # type: ignore[union-attr]
    assert len(hosts) == 1 and vm_rows(root) == list(hosts)
    facts = {cid: guest_facts(root, cid) for cid in ("pod1", "c1", "c2")}
    assert len({boot for boot, _, _ in facts.values()}) == 1, facts
    # One network namespace (the sandbox's own, not the guest's: runc made it for pod1).
    assert len({net for _, net, _ in facts.values()}) == 1, facts
    assert facts["c1"][2] == facts["pod1"][2] != facts["c2"][2], facts  # ipc: as the spec says

    # pause freezes c2's cgroup in the guest: its counter stops, and goes on after resume.
    wait_until(lambda: out.read_bytes().count(b"\n") >= 3)
    assert runtime(root, "pause", "c2").returncode == 0
    assert state_of(root, "c2")["status"] == "paused"
    frozen = out.read_bytes()
    time.sleep(2)
    assert out.read_bytes() == frozen
    assert runtime(root, "resume", "c2").returncode == 0
    assert state_of(root, "c2")["status"] == "running"
    wait_until(lambda: out.read_bytes().count(b"\n") >= frozen.count(b"\n") + 3)

    # update: runc's flags and -r (JSON on stdin), seen in c2's cgroup in the guest.
    assert runtime(root, "update", "--memory", "64m", "c2").returncode == 0
    update = runtime(
        root, "update", "-r", "-", "c2", input=b'{"cpu": {"quota": 50000, "period": 100000}}'
    )
    assert update.returncode == 0, update.stderr
    # The container's cgroup (0::PATH) in the guest's cgroup2 mount, as the container sees it.
    script = "g=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $g/memory.max $g/cpu.max"
    limits = runtime(root, "exec", "c2", "sh", "-c", script)
    assert limits.stdout.decode().split() == [str(64 << 20), "50000", "100000"], limits
    assert_one_line_error(runtime(root, "update", "--memory", "lots", "c2"), "lots")

    # c1 goes: the VM stays, for its sandbox.
    assert runtime(root, "kill", "c1", "KILL").returncode == 0
    assert reap(int((tmp_path / "c1.pid").read_text())) == 128 + signal.SIGKILL
    assert runtime(root, "delete", "c1").returncode == 0
    assert vm_rows(root) == list(hosts)
    assert guest_facts(root, "pod1")[0] == facts["pod1"][0]

    # The sandbox goes: so does the VM, and c2 (still running) with it.
    assert runtime(root, "kill", "pod1", "KILL").returncode == 0
    assert reap(sandbox_pid) == 128 + signal.SIGKILL
    assert runtime(root, "delete", "pod1").returncode == 0
    assert vm_rows(root) == []
    assert reap(c2_pid) in (128 + signal.SIGKILL, 255)  # its guest process, or its lost VM
    from fixtures_uvm import qemu_processes

    assert qemu_processes(hosts.pop()) == []
    gone = create_vm(root, c2, "c4", tmp_path / "c4.pid", None, "--isolation", "vm")
    assert_one_line_error(gone, POD_SANDBOX, "'pod1'", "no such sandbox")
    assert runtime(root, "delete", "c2").returncode == 0


@pytest.mark.timeout(240)
def test_vm_pod_sandbox_whose_controller_died(
    root: Path, rootfs: Path, tmp_path: Path, subreaper: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container of a sandbox whose VM controller died: one line naming the annotation,
    nothing of the container made; gc then reclaims the sandbox."""
    sandbox = pod_bundle(
        tmp_path / "sandbox", rootfs, ["sleep", "600"],
        {"io.kubernetes.cri-o.ContainerType": "sandbox", "io.kubernetes.cri-o.SandboxID": "pod2"},
    )  # fmt: skip
    created = create_vm(root, sandbox, "pod2", tmp_path / "pod2.pid", None, "--isolation", "vm")
    assert created.returncode == 0, created.stderr
    controller = Store(root).query("SELECT controller_pid FROM vms")[0]["controller_pid"]
    os.kill(controller, signal.SIGKILL)
    reap(controller)
    member = {
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.SandboxID": "pod2",
    }
    bundle = pod_bundle(tmp_path / "c1", rootfs, ["true"], member)
    result = create_vm(root, bundle, "c1", tmp_path / "c1.pid")
    assert_one_line_error(result, "io.kubernetes.cri-o.SandboxID", "'pod2'", "utility VM is gone")
    assert not (tmp_path / "c1.pid").exists()
    assert sorted(os.listdir(root / "hcsoci-runc-vm")) == ["pod2"]
    assert container_table.get(Store(root), "c1") is None
    monkeypatch.setenv("HCSOCI_ROOT", str(root))
    assert collect(context.background(), Store(root)) == ["pod2"]
    from hcsoci.uvm.vm import reap_dead_vms

    reap_dead_vms(Store(root))
    assert vm_rows(root) == []
    assert runtime(root, "delete", "--force", "pod2").returncode == 0  # the engine's cleanup
    assert reap(int((tmp_path / "pod2.pid").read_text())) == 128 + signal.SIGKILL


@given(st.dictionaries(st.text(), st.text(), max_size=4))
def test_journal_records_are_the_json_that_json_dumps_writes(fields: dict[str, str]) -> None:
    """The runtime writes its records without ``json`` (for start-up): the same bytes."""
    assert records.json_object(fields) == json.dumps(fields)


PODMAN_ANNOTATIONS = {  # what podman 4.3 writes on every container: no pod among them
    "io.container.manager": "libpod",
    "io.kubernetes.cri-o.Created": "2026-12-02T21:43:21.94571565Z",
    "io.kubernetes.cri-o.TTY": "false",
    "io.podman.annotations.autoremove": "TRUE",
}


def test_only_a_spec_that_may_name_a_pod_or_an_isolation_is_parsed() -> None:
    plain = json.dumps({"annotations": PODMAN_ANNOTATIONS}).encode()
    assert not may_name_pod_role(plain)
    assert not may_name_isolation(plain)
    for role, sandbox in POD_SCHEMES:
        named = json.dumps({"annotations": {**PODMAN_ANNOTATIONS, role: "container"}})
        assert may_name_pod_role(named.encode())
        assert not may_name_pod_role(json.dumps({sandbox: "s1"}).encode())
    isolation = json.dumps({"annotations": {ISOLATION: "vm"}}).encode()
    assert may_name_isolation(isolation) and not may_name_pod_role(isolation)
    escaped = b'{"annotations": {"io.kubernetes.cri\\u002econtainer-type": "container"}}'
    assert json.loads(escaped)["annotations"] == {"io.kubernetes.cri.container-type": "container"}
    assert may_name_pod_role(escaped) and may_name_isolation(escaped)


def test_process_pod_shares_the_sandbox_namespaces(
    root: Path, rootfs: Path, tmp_path: Path
) -> None:
    """Process isolation: the annotations change nothing; runc joins the namespaces the
    spec names (the sandbox's), as for any container."""
    sandbox = pod_bundle(
        tmp_path / "sandbox", rootfs, ["sleep", "600"], {POD_TYPE: "sandbox", POD_SANDBOX: "pp1"}
    )
    pid_file = tmp_path / "pp1.pid"
    assert (
        runtime(
            root, "create", "--bundle", str(sandbox), "--pid-file", str(pid_file), "pp1"
        ).returncode
        == 0
    )
    sandbox_pid = int(pid_file.read_text())
    member = pod_bundle(
        tmp_path / "c1", rootfs, ["sleep", "600"], {POD_TYPE: "container", POD_SANDBOX: "pp1"},
        {"network": f"/proc/{sandbox_pid}/ns/net"},
    )  # fmt: skip
    created = runtime(
        root, "create", "--bundle", str(member), "--pid-file", str(tmp_path / "c1.pid"), "pc1"
    )
    assert created.returncode == 0, created.stderr
    member_pid = int((tmp_path / "c1.pid").read_text())
    assert os.readlink(f"/proc/{member_pid}/ns/net") == os.readlink(f"/proc/{sandbox_pid}/ns/net")
    assert os.readlink(f"/proc/{member_pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{member_pid}/ns/ipc") != os.readlink(f"/proc/{sandbox_pid}/ns/ipc")
    assert not (root / "hcsoci-runc-vm").exists()  # no VM for a process pod
    for container_id in ("pc1", "pp1"):
        assert runtime(root, "delete", "--force", container_id).returncode == 0
