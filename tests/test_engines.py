"""containerd (ctr), docker and podman running their containers through ``hcsoci-runc``.

Each engine gets the same scenarios (process isolation): output and exit
code, stdin, a terminal, a detached container with exec, ps and kill, stop
(SIGTERM, then SIGKILL), logs, pause and unpause, a bind mount, env, working
directory and user, a memory limit seen in the container's cgroup, ten
containers in a row -- and after all of them nothing left: no runc state, no
hcsoci record, no mount, no process.  One daemon per engine for the module
(see tests/fixtures_engines.py).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fixtures_engines import (
    RUNTIME,
    RUNTIME_VM,
    Engine,
    containerd_daemon,
    docker_daemon,
    memory_limit_of,
    podman_engine,
    processes_in_cgroups_named,
    rootfs_mounts_under,
    run_in_pty,
    runtime_leftovers,
)

pytestmark = [pytest.mark.usefixtures("requires_engines"), pytest.mark.timeout(180)]

IMAGE = "busybox:latest"


class Driver:
    """One engine's command lines for the scenarios (they differ: ctr has no -i, stop, logs)."""

    def __init__(self, engine: Engine, image: str) -> None:
        self.engine = engine
        self.image = image
        self.ids: list[str] = []

    @property
    def name(self) -> str:
        return self.engine.name

    def new_id(self) -> str:
        container_id = f"hcsoci-{uuid.uuid4().hex[:12]}"
        self.ids.append(container_id)
        return container_id

    def run_argv(self, args: list[str], *, flags: Sequence[str] = (), rm: bool = True) -> list[str]:
        """The client command line of a foreground run of ``args``."""
        container_id = self.new_id()
        rm_flag = ["--rm"] if rm else []
        return [
            *self.engine.client,
            "run",
            *rm_flag,
            *self.engine.run_flags,
            *flags,
            "--name",
            container_id,
            self.image,
            *args,
        ]

    def run(
        self, args: list[str], *, flags: Sequence[str] = (), input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.run_argv(args, flags=list(flags)),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def run_detached(self, args: list[str], flags: Sequence[str] = ()) -> str:
        container_id = self.new_id()
        self.engine.check(
            "run", "-d", *self.engine.run_flags, *flags, "--name", container_id, self.image, *args
        )
        return container_id

    def exec(self, container_id: str, args: list[str], user: str = "") -> str:
        return self.engine.check("exec", *(["--user", user] if user else []), container_id, *args)

    def exec_tty_argv(self, container_id: str, args: list[str]) -> list[str]:
        """The client command line of an exec with a terminal."""
        return [*self.engine.client, "exec", "--tty", container_id, *args]

    def host_pids(self, container_id: str) -> list[int]:
        """The container's processes, as the engine's ``ps``/``top`` got them from the runtime."""
        output = self.engine.check("top", container_id, "-o", "pid")
        return [int(line) for line in output.split()[1:] if line.isdigit()]

    def runtime_id(self, container_id: str) -> str:
        """The id the engine gave the runtime for the container named ``container_id``."""
        return self.engine.check("inspect", "--format", "{{.Id}}", container_id).strip()

    def kill(self, container_id: str, signal: str) -> None:
        self.engine.check("kill", "--signal", signal, container_id)

    def stop(self, container_id: str) -> None:
        self.engine.check("stop", "--time", "1", container_id)

    def wait(self, container_id: str) -> int:
        return int(self.engine.check("wait", container_id).split()[-1])

    def logs(self, container_id: str) -> str:
        return self.engine.check("logs", container_id)

    def pause(self, container_id: str) -> None:
        self.engine.check("pause", container_id)

    def unpause(self, container_id: str) -> None:
        self.engine.check("unpause", container_id)

    def remove(self, container_id: str) -> None:
        self.engine.run("rm", "--force", container_id)

    def bind_flags(self, source: Path, target: str) -> list[str]:
        return ["--volume", f"{source}:{target}:ro"]

    def env_flags(self, env: str, cwd: str, user: str) -> list[str]:
        return ["--env", env, "--workdir", cwd, "--user", user]

    def memory_flags(self, limit: int) -> list[str]:
        return ["--memory", str(limit)]

    def stdin_flags(self) -> list[str]:
        return ["--interactive"]


class PodmanDriver(Driver):
    """podman: ``top`` takes format descriptors (``hpid``: the host pid)."""

    def host_pids(self, container_id: str) -> list[int]:
        output = self.engine.check("top", container_id, "hpid")
        return [int(line) for line in output.split()[1:] if line.isdigit()]


class CtrDriver(Driver):
    """ctr: ``--runc-binary`` names the runtime (the runc shim's ``BinaryName`` option)."""

    def __init__(self, engine: Engine, image: str, runtime_root: Path) -> None:
        super().__init__(engine, image)
        self.runtime_flags = ["--runc-binary", RUNTIME, "--runc-root", str(runtime_root)]
        self.log_dir = runtime_root / "logs"
        self.log_dir.mkdir()

    def run_argv(self, args: list[str], *, flags: Sequence[str] = (), rm: bool = True) -> list[str]:
        container_id = self.new_id()
        return [
            *self.engine.client,
            "run",
            *(["--rm"] if rm else []),
            *self.runtime_flags,
            *flags,
            self.image,
            container_id,
            *args,
        ]

    def run_detached(self, args: list[str], flags: Sequence[str] = ()) -> str:
        container_id = self.new_id()
        log = f"file://{self.log_dir}/{container_id}.log"  # ctr keeps no logs of its own
        self.engine.check(
            "run", "-d", "--log-uri", log, *self.runtime_flags, *flags, self.image, container_id,
            *args,
        )  # fmt: skip
        return container_id

    def logs(self, container_id: str) -> str:
        return (self.log_dir / f"{container_id}.log").read_text()

    def exec(self, container_id: str, args: list[str], user: str = "") -> str:
        exec_id = f"e{uuid.uuid4().hex[:8]}"
        return self.engine.check(
            "task", "exec", "--exec-id", exec_id, *(["--user", user] if user else []),
            container_id, *args,
        )  # fmt: skip

    def runtime_id(self, container_id: str) -> str:
        return container_id

    def exec_tty_argv(self, container_id: str, args: list[str]) -> list[str]:
        exec_id = f"e{uuid.uuid4().hex[:8]}"
        return [*self.engine.client, "task", "exec", "--tty", "--exec-id", exec_id, container_id,
                *args]  # fmt: skip

    def host_pids(self, container_id: str) -> list[int]:
        output = self.engine.check("task", "ps", container_id)
        return [int(line.split()[0]) for line in output.splitlines()[1:] if line.strip()]

    def kill(self, container_id: str, signal: str) -> None:
        self.engine.check("task", "kill", "--signal", signal, container_id)

    def stop(self, container_id: str) -> None:
        self.kill(container_id, "SIGTERM")
        time.sleep(1)
        with contextlib.suppress(AssertionError):
            self.kill(container_id, "SIGKILL")  # not needed when TERM ended it

    def wait(self, container_id: str) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listing = self.engine.check("task", "ls")
            for line in listing.splitlines()[1:]:
                fields = line.split()
                if fields and fields[0] == container_id and fields[-1] == "STOPPED":
                    return self._exit_status(container_id)
            time.sleep(0.1)
        raise AssertionError(f"{container_id} did not stop")

    def _exit_status(self, container_id: str) -> int:
        # `ctr task delete` warns "task ID exit with non-zero exit code N" (and exits 0).
        result = self.engine.run("task", "delete", container_id)
        assert result.returncode == 0, result.stderr
        found = re.search(rb"non-zero exit code (\d+)", result.stderr)
        return int(found.group(1)) if found else 0

    def pause(self, container_id: str) -> None:
        self.engine.check("task", "pause", container_id)

    def unpause(self, container_id: str) -> None:
        self.engine.check("task", "resume", container_id)

    def remove(self, container_id: str) -> None:
        self.engine.run("task", "kill", "--signal", "SIGKILL", container_id)
        for _ in range(50):
            if self.engine.run("task", "delete", container_id).returncode != 0:
                break
            time.sleep(0.1)
        self.engine.run("task", "delete", "--force", container_id)
        self.engine.run("container", "delete", container_id)

    def bind_flags(self, source: Path, target: str) -> list[str]:
        return ["--mount", f"type=bind,src={source},dst={target},options=rbind:ro"]

    def env_flags(self, env: str, cwd: str, user: str) -> list[str]:
        return ["--env", env, "--cwd", cwd]  # ctr run has no --user: checked through exec

    def memory_flags(self, limit: int) -> list[str]:
        return ["--memory-limit", str(limit)]

    def stdin_flags(self) -> list[str]:
        return []  # ctr always attaches stdin (and never closes it: readers stop by count)


@pytest.fixture(scope="module", params=["ctr", "docker", "podman"])
def driver(
    request: pytest.FixtureRequest, engine_image_archive: Path, state_root: str
) -> Iterator[Driver]:
    """Each engine in turn, its daemon started for the module, the busybox image loaded."""
    with contextlib.ExitStack() as stack:
        name = request.param
        if name == "podman":
            engine = stack.enter_context(podman_engine("podman", Path(state_root)))
            engine.check("load", "--input", str(engine_image_archive))
            chosen: Driver = PodmanDriver(engine, "localhost/busybox:latest")
        else:
            socket, dirs = stack.enter_context(containerd_daemon(f"containerd-{name}"))
            if name == "docker":
                engine = stack.enter_context(docker_daemon(socket, "dockerd"))
                engine.check("load", "--input", str(engine_image_archive))
                chosen = Driver(engine, IMAGE)
            else:
                namespace = f"hcsoci-test-{uuid.uuid4().hex[:8]}"
                runtime_root = Path(tempfile.mkdtemp(prefix="hcsoci-test-ctr-root-", dir="/run"))
                stack.callback(lambda: subprocess.run(["rm", "-rf", str(runtime_root)]))
                # The shim's runc root is --runc-root/<namespace>: hcsoci-runc's state root.
                engine = Engine(
                    "ctr",
                    ["ctr", "--address", str(socket), "--namespace", namespace],
                    runtime_root / namespace,
                    cgroup_marker=f"/{namespace}/",
                    dirs=dirs,
                )
                engine.check("images", "import", str(engine_image_archive))
                chosen = CtrDriver(engine, IMAGE, runtime_root)
        try:
            yield chosen
        finally:
            for container_id in chosen.ids:
                chosen.remove(container_id)


@pytest.fixture
def gone_after(driver: Driver) -> Iterator[Driver]:
    """The driver; afterwards, every container the test made must have left nothing."""
    before = len(driver.ids)
    yield driver
    for container_id in driver.ids[before:]:
        driver.remove(container_id)
    deadline = time.monotonic() + 10
    while True:
        left = runtime_leftovers(driver.engine.runtime_root)
        processes = processes_in_cgroups_named(driver.engine.cgroup_marker)
        mounts = rootfs_mounts_under(*driver.engine.dirs)
        if (not left and not processes and not mounts) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == [], left
    assert processes == [], processes
    assert mounts == [], mounts


def on_vm(driver: Driver) -> Driver:
    """The engine's driver with ``hcsoci-runc-vm`` as its runtime (a utility VM per container)."""
    chosen = copy.copy(driver)
    engine = chosen.engine
    if isinstance(chosen, CtrDriver):
        chosen.runtime_flags = [
            RUNTIME_VM if flag == RUNTIME else flag for flag in chosen.runtime_flags
        ]
    elif engine.name == "docker":
        flags = ["hcsoci-vm" if flag == "hcsoci" else flag for flag in engine.run_flags]
        chosen.engine = dataclasses.replace(engine, run_flags=flags)
    else:
        client = [flag + "-vm" if flag.endswith("/hcsoci-runc") else flag for flag in engine.client]
        chosen.engine = dataclasses.replace(engine, client=client)
    return chosen


@pytest.fixture(params=["process", "vm"])
def isolated(request: pytest.FixtureRequest, gone_after: Driver) -> Driver:
    """The scenarios both isolations run: the driver on hcsoci-runc, then on hcsoci-runc-vm
    (the same nothing-left checks after each)."""
    return gone_after if request.param == "process" else on_vm(gone_after)


def in_vm(driver: Driver) -> bool:
    """Whether the driver runs its containers in utility VMs."""
    return (
        RUNTIME_VM in getattr(driver, "runtime_flags", [])
        or "hcsoci-vm" in driver.engine.run_flags
        or any(flag.endswith("/hcsoci-runc-vm") for flag in driver.engine.client)
    )


def test_output_and_exit_code(isolated: Driver) -> None:
    result = isolated.run(["sh", "-c", "echo out; echo err >&2; uname -r; exit 3"])
    assert result.returncode == 3, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == "out", lines
    # In a utility VM, the guest's own kernel; else the host's.
    assert (lines[1] != os.uname().release) == in_vm(isolated), lines


def test_stdin(isolated: Driver) -> None:
    result = isolated.run(["head", "-c", "5"], flags=isolated.stdin_flags(), input=b"hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello"


def test_terminal(isolated: Driver) -> None:
    argv = isolated.run_argv(["sh", "-c", "tty; exit 4"], flags=["--tty"])
    code, output = run_in_pty(argv)
    assert code == 4, output
    assert b"/dev/pts/" in output or b"/dev/console" in output, output


def test_detached_exec_ps_kill(isolated: Driver) -> None:
    container_id = isolated.run_detached(["sleep", "300"])
    assert isolated.exec(container_id, ["echo", "from exec"]).strip() == "from exec"
    if not in_vm(isolated):
        pids = isolated.host_pids(container_id)
        assert pids, "ps gave no pid"
        runtime_id = isolated.runtime_id(container_id)
        assert all(runtime_id in Path(f"/proc/{pid}/cgroup").read_text() for pid in pids)
    elif isolated.name != "podman":  # podman's top reads the host cgroup a VM container lacks
        assert len(isolated.host_pids(container_id)) == 1  # the stand-in (`ps --format json`)
    isolated.kill(container_id, "SIGKILL")
    assert isolated.wait(container_id) == 137


def test_exec_with_a_terminal(isolated: Driver) -> None:
    container_id = isolated.run_detached(["sleep", "300"])
    code, output = run_in_pty(isolated.exec_tty_argv(container_id, ["sh", "-c", "tty; exit 6"]))
    assert code == 6, output
    assert b"/dev/pts/" in output, output
    isolated.kill(container_id, "SIGKILL")
    assert isolated.wait(container_id) == 137


def test_stop_term_then_kill(gone_after: Driver) -> None:
    trapping = gone_after.run_detached(
        ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done"]
    )
    ignoring = gone_after.run_detached(["sleep", "300"])  # an init without a handler ignores TERM
    time.sleep(0.3)  # the shell has set its trap
    gone_after.stop(trapping)
    gone_after.stop(ignoring)
    assert gone_after.wait(trapping) == 7
    assert gone_after.wait(ignoring) == 137


def test_logs(gone_after: Driver) -> None:
    container_id = gone_after.run_detached(["sh", "-c", "echo logged line"])
    assert gone_after.wait(container_id) == 0
    assert "logged line" in gone_after.logs(container_id)


def test_pause_resume(isolated: Driver) -> None:
    gone_after = isolated
    container_id = gone_after.run_detached(["sleep", "300"])
    gone_after.pause(container_id)
    state = json.loads(
        subprocess.run(
            [
                RUNTIME,
                "--root",
                str(gone_after.engine.runtime_root),
                "state",
                gone_after.runtime_id(container_id),
            ],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert state["status"] == "paused"
    gone_after.unpause(container_id)
    assert gone_after.exec(container_id, ["echo", "awake"]).strip() == "awake"
    gone_after.kill(container_id, "SIGKILL")
    gone_after.wait(container_id)


def test_bind_mount(gone_after: Driver, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("from the host\n")
    result = gone_after.run(
        ["sh", "-c", "cat /data/file; touch /data/new"],
        flags=gone_after.bind_flags(tmp_path, "/data"),
    )
    assert b"from the host" in result.stdout, result.stderr
    assert result.returncode != 0  # read-only
    assert not (tmp_path / "new").exists()


def test_env_workdir_user(gone_after: Driver) -> None:
    result = gone_after.run(
        ["sh", "-c", 'echo "$GREETING $(pwd) $(id -u)"'],
        flags=gone_after.env_flags("GREETING=hi", "/tmp", "65534"),
    )
    assert result.returncode == 0, result.stderr
    expected_uid = "0" if gone_after.name == "ctr" else "65534"
    assert result.stdout.decode().split() == ["hi", "/tmp", expected_uid]
    if gone_after.name == "ctr":
        container_id = gone_after.run_detached(["sleep", "300"])
        assert gone_after.exec(container_id, ["id", "-u"], user="65534").strip() == "65534"
        gone_after.kill(container_id, "SIGKILL")
        gone_after.wait(container_id)


def test_memory_limit(gone_after: Driver) -> None:
    limit = 64 * 1024 * 1024
    container_id = gone_after.run_detached(["sleep", "300"], flags=gone_after.memory_flags(limit))
    pids = gone_after.host_pids(container_id)
    assert memory_limit_of(pids[0]) == limit
    gone_after.kill(container_id, "SIGKILL")
    gone_after.wait(container_id)


def test_ten_in_a_row(gone_after: Driver) -> None:
    for number in range(10):
        result = gone_after.run(["sh", "-c", f"echo {number}"])
        assert (result.returncode, result.stdout.strip()) == (0, str(number).encode())


def test_vm_pod(gone_after: Driver) -> None:
    """CRI annotations through the engine: a sandbox on hcsoci-runc-vm, and a container of
    its pod through plain hcsoci-runc: it follows the sandbox into its VM and network.
    (podman binds four single files from each container's userdata directory: one Plan9
    slot per container for them, not four.)"""
    if gone_after.name == "docker":
        pytest.skip("docker 20.10 cannot set OCI annotations (interop/CLI-SURFACE.md)")
    vm = on_vm(gone_after)
    kind = "io.kubernetes.cri.container-type"
    sandbox = vm.run_detached(["sleep", "300"], flags=["--annotation", f"{kind}=sandbox"])
    member = [
        "--annotation", f"{kind}=container",
        "--annotation", f"io.kubernetes.cri.sandbox-id={vm.runtime_id(sandbox)}",
    ]  # fmt: skip
    facts = "cat /proc/sys/kernel/random/boot_id; readlink /proc/self/ns/net"
    result = gone_after.run(["sh", "-c", facts], flags=member)
    assert result.returncode == 0, result.stderr
    in_sandbox = vm.exec(sandbox, ["sh", "-c", facts])
    host_boot = Path("/proc/sys/kernel/random/boot_id").read_text()
    assert result.stdout.decode() == in_sandbox, (result.stdout, in_sandbox)  # one VM, one net
    assert not in_sandbox.startswith(host_boot), "not in a utility VM"
    vm.kill(sandbox, "SIGKILL")
    assert vm.wait(sandbox) == 137
