"""Engine fixtures: containerd, dockerd and podman of our own, driving ``hcsoci-runc``.

Each daemon is started by the test module that needs it (module scope), in
directories of its own under ``/run`` and ``/tmp``, on its own socket, and
stopped by its pid at the end; the host's daemons (if any), firewall and
bridges are never touched: dockerd runs with ``--iptables=false
--ip-masq=false --ip-forward=false --bridge=none`` and every container with
``--network none``.  The image is the project's busybox, built from Debian's
busybox-static and loaded into each engine from one archive.

The engines are told to use the runtime by its path: ``ctr run --runc-binary``
(the ``BinaryName`` runtime option), ``dockerd --add-runtime hcsoci=PATH``
and ``podman --runtime PATH``; the same engines with plain runc are the
benchmark's baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hcsoci.images.default import write_archive

RUNTIME = str(Path(sys.executable).parent / "hcsoci-runc")
RUNTIME_VM = str(Path(sys.executable).parent / "hcsoci-runc-vm")
"""The same program under the name that makes VM isolation its default."""
"""The console script of this checkout's virtual environment."""

DOCKER = "/usr/bin/docker"
"""Debian's docker client (``/usr/local/bin/docker`` may be another one)."""

_MISSING = [
    tool
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2", "dockerd", "podman", "conmon")
    if shutil.which(tool) is None
] + ([] if os.access(DOCKER, os.X_OK) else [DOCKER])


@pytest.fixture
def requires_engines() -> None:
    """The Makefile installs every engine: one missing is a broken install, not a skip."""
    if _MISSING:
        pytest.fail(f"engines not installed (make system-packages): {_MISSING}")


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM ``pid``, SIGKILL it after ``timeout`` s, and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _wait_until_ready(command: Sequence[str], daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
        if subprocess.run(command, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{command[0]} not ready after 60 s: {log.read_text()[-2000:]}")


@dataclass
class Engine:
    """One engine and how to call it: ``argv(...)`` prefixes its client command line."""

    name: str
    client: list[str]
    runtime_root: Path
    """hcsoci's state root as the engine's calls name it (``--root``, or $HCSOCI_ROOT)."""
    run_flags: list[str] = field(default_factory=list)
    """What every ``run`` needs to use hcsoci-runc (``--runtime hcsoci``...)."""
    cgroup_marker: str = ""
    """What the cgroup path of each of this engine's containers holds."""
    dirs: list[Path] = field(default_factory=list)
    """The engine's own directories (where its containers' root file systems are mounted)."""

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the client with ``args``; output captured, never raises for an exit status."""
        return subprocess.run(
            [*self.client, *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def check(self, *args: str, input: bytes | None = None, timeout: float = 60) -> str:
        """Run the client; its stdout, or an assertion naming stderr when it failed."""
        result = self.run(*args, input=input, timeout=timeout)
        assert result.returncode == 0, (args, result.returncode, result.stderr.decode())
        return result.stdout.decode()


def run_in_pty(argv: Sequence[str], timeout: float = 60) -> tuple[int, bytes]:
    """Run ``argv`` with a terminal as its stdio; (exit status, everything it wrote)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break  # EIO: every slave descriptor is closed
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), output
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def engine_image_archive() -> Iterator[Path]:
    """The busybox image as a tar every engine loads (docker-archive + OCI layout)."""
    directory = Path(tempfile.mkdtemp(prefix="hcsoci-test-image-"))
    try:
        archive = directory / "busybox.tar"
        write_archive(archive)
        yield archive
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def containerd_daemon(tag: str) -> Iterator[tuple[Path, list[Path]]]:
    """A containerd of our own (CRI off); yields its socket and its directories."""
    state = Path(tempfile.mkdtemp(prefix=f"hcsoci-test-{tag}-", dir="/run"))
    data = Path(tempfile.mkdtemp(prefix=f"hcsoci-test-{tag}-", dir="/var/tmp"))
    socket = state / "containerd.sock"
    config = state / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{data}/root"\n'
        f'state = "{state}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
        ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",'
        ' "io.containerd.internal.v1.tracing"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )
    log = state / "containerd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        _wait_until_ready(["ctr", "--address", str(socket), "version"], daemon, log)
        yield socket, [state, data]
    finally:
        stop_pid(daemon.pid)
        _unmount_under(state)
        _unmount_under(data)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def docker_daemon(
    containerd_socket: Path, tag: str, runtimes: dict[str, str] | None = None
) -> Iterator[Engine]:
    """A dockerd of our own on ``containerd_socket``, with hcsoci-runc as runtime ``hcsoci``
    (``hcsoci-vm`` for VM isolation) and the other ``runtimes`` (name -> path) it is given."""
    state = Path(tempfile.mkdtemp(prefix=f"hcsoci-test-{tag}-", dir="/run"))
    data = Path(tempfile.mkdtemp(prefix=f"hcsoci-test-{tag}-", dir="/var/tmp"))
    socket = state / "docker.sock"
    (state / "daemon.json").write_text("{}")
    log = state / "dockerd.log"
    argv = [
        "dockerd",
        "--config-file", str(state / "daemon.json"),
        "--data-root", str(data),
        "--exec-root", str(state / "exec"),
        "--pidfile", str(state / "docker.pid"),
        "--host", f"unix://{socket}",
        "--containerd", str(containerd_socket),
        "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none",
        "--userland-proxy=false",
        "--storage-driver", "overlay2",
        "--add-runtime", f"hcsoci={RUNTIME}",
        "--add-runtime", f"hcsoci-vm={RUNTIME_VM}",
        *(f"--add-runtime={name}={path}" for name, path in (runtimes or {}).items()),
    ]  # fmt: skip
    env = {**os.environ, "DOCKER_CONFIG": str(state / "client")}
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=env
        )
    client = [DOCKER, "--config", str(state / "client"), "--host", f"unix://{socket}"]
    try:
        _wait_until_ready([*client, "version"], daemon, log)
        yield Engine(
            "docker",
            client,
            runtime_root=state / "exec" / "runtime-runc" / "moby",
            run_flags=["--runtime", "hcsoci", "--network", "none"],
            cgroup_marker="/docker/",
            dirs=[state, data],
        )
    finally:
        stop_pid(daemon.pid)
        _unmount_under(state)
        _unmount_under(data)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def podman_engine(tag: str, runtime_root: Path) -> Iterator[Engine]:
    """podman with storage of its own, hcsoci-runc as ``--runtime``, cgroupfs, no network.

    podman calls the runtime without ``--root``, with an environment of its
    own (not ours: ``$HCSOCI_ROOT`` does not reach the runtime), and its
    cleanup process without any runtime flag; so ``--runtime`` names a
    two-line wrapper giving hcsoci-runc ``--root runtime_root`` on every call
    (as dockerd's ``runtimeArgs`` do; see docs/engines.md).
    """
    state = Path(tempfile.mkdtemp(prefix=f"hcsoci-test-{tag}-", dir="/run"))
    data = Path(tempfile.mkdtemp(prefix=f"hcsoci-test-{tag}-", dir="/var/tmp"))
    # The host lacks CAP_SYS_RESOURCE: podman's default ulimits would fail every container.
    (state / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    (state / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{data}"\nrunroot = "{state}/runroot"\n'
    )
    # podman's environment is its own: the VM assets the tests use are named in the wrapper.
    assets = os.environ.get("HCSOCI_ASSETS")
    env = f"HCSOCI_ASSETS={shlex.quote(assets)} " if assets else ""
    wrapper = state / "hcsoci-runc"
    wrapper.write_text(f'#!/bin/sh\n{env}exec {RUNTIME} --root {runtime_root} "$@"\n')
    wrapper.chmod(0o700)
    vm_wrapper = state / "hcsoci-runc-vm"  # named so: VM isolation
    vm_wrapper.write_text(f'#!/bin/sh\n{env}exec {RUNTIME_VM} --root {runtime_root} "$@"\n')
    vm_wrapper.chmod(0o700)
    os.environ["CONTAINERS_CONF"] = str(state / "containers.conf")
    os.environ["CONTAINERS_STORAGE_CONF"] = str(state / "storage.conf")
    client = [
        "podman",
        "--root", str(data),
        "--runroot", str(state / "runroot"),
        "--tmpdir", str(state / "tmp"),
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "file",
        "--runtime", str(wrapper),
    ]  # fmt: skip
    try:
        yield Engine(
            "podman",
            client,
            runtime_root=runtime_root,
            run_flags=["--network", "none"],
            cgroup_marker="/libpod-",
            dirs=[state, data],
        )
    finally:
        subprocess.run([*client, "rm", "--all", "--force"], capture_output=True, check=False)
        subprocess.run([*client, "system", "reset", "--force"], capture_output=True, check=False)
        del os.environ["CONTAINERS_CONF"]
        del os.environ["CONTAINERS_STORAGE_CONF"]
        _unmount_under(state)
        _unmount_under(data)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


def rootfs_mounts_under(*directories: Path) -> list[str]:
    """Container root file systems (``rootfs``, ``merged``) mounted below ``directories``."""
    return [m for m in mounts_under(*directories) if m.endswith(("/rootfs", "/merged"))]


def mounts_under(*directories: Path) -> list[str]:
    """Mount points at or below any of ``directories`` (from /proc/self/mountinfo)."""
    prefixes = [str(d).rstrip("/") for d in directories]
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return found


def _unmount_under(directory: Path) -> None:
    for point in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def processes_in_cgroups_named(word: str) -> list[int]:
    """Pids whose cgroup path holds ``word`` (a container id, an engine's parent cgroup)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as cgroups:
                if word in cgroups.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def memory_limit_of(pid: int) -> int:
    """The memory limit (bytes) of the cgroup ``pid`` is in (cgroup v1, else v2)."""
    with open(f"/proc/{pid}/cgroup") as cgroups:
        lines = cgroups.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text())
    for line in lines:
        if line.startswith("0::"):
            text = Path(f"/sys/fs/cgroup/unified{line[3:]}/memory.max").read_text().strip()
            return -1 if text == "max" else int(text)
    raise AssertionError(f"no memory cgroup for {pid}: {lines}")


def _kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL each of ``pids`` and wait until it is gone: reaped when it is our child (a
    subreaper's adoptee), else ended (a zombie of its own parent's counts as ended)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break  # ours, reaped
                ours = True
            except ChildProcessError:
                ours = False
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    zombie = stat.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                break
            if zombie and not ours:
                break
            time.sleep(0.05)


def release_runtime_leftovers(root: Path) -> None:
    """Release what a failed test left under hcsoci-runc's state root ``root``.

    The VM containers' stand-ins, the VMs' controllers and their QEMU
    processes are killed by pid (from the records under ``root`` alone);
    then ``hcsoci gc`` on ``root`` releases the containers and VMs (their
    state directories, log tmpfs and rows), and ``hcsoci-runc delete
    --force`` drops hcsoci-runc's own files.
    """
    from fixtures_uvm import qemu_processes

    vm_dir = root / "hcsoci-runc-vm"
    ids = sorted(os.listdir(vm_dir)) if vm_dir.is_dir() else []
    standins = []
    for entry in ids:
        with contextlib.suppress(OSError, ValueError, KeyError):
            standins.append(int(json.loads((vm_dir / entry / "container.json").read_text())["pid"]))
    _kill_and_wait([pid for pid in standins if pid > 0])
    database = root / "state.db"
    vms: list[tuple[str, int]] = []
    if database.exists():
        import sqlite3

        with contextlib.closing(sqlite3.connect(database)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if "vms" in tables:
                vms = [
                    (str(r[0]), int(r[1]))
                    for r in conn.execute("SELECT id, controller_pid FROM vms")
                ]
    _kill_and_wait([pid for _, pid in vms if pid > 0])
    _kill_and_wait([pid for vm_id, _ in vms for pid in qemu_processes(vm_id)])
    if database.exists():
        hcsoci = str(Path(sys.executable).parent / "hcsoci")
        env = {**os.environ, "HCSOCI_ROOT": str(root)}
        done = subprocess.run([hcsoci, "gc"], env=env, capture_output=True, timeout=120)
        print(f"hcsoci gc on {root}: exit {done.returncode}", done.stdout, done.stderr)
    for entry in ids:
        subprocess.run(
            [RUNTIME, "--root", str(root), "delete", "--force", entry],
            capture_output=True,
            timeout=60,
            check=False,
        )


def runtime_leftovers(root: Path) -> list[str]:
    """What hcsoci-runc still holds under the state root ``root``: runc state, markers, rows."""
    left = []
    for name in ("runc", "hcsoci-runc", "hcsoci-runc-vm"):
        directory = root / name
        if directory.is_dir():
            left += [f"{name}/{entry}" for entry in os.listdir(directory)]
    database = root / "state.db"
    if database.exists():
        import sqlite3

        with contextlib.closing(sqlite3.connect(database)) as conn:
            left += [
                f"row {row[0]}"
                for row in conn.execute("SELECT id FROM containers WHERE owner = 'hcsoci-runc'")
            ]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if "vms" in tables:  # a VM container's utility VM
                left += [f"vm {row[0]}" for row in conn.execute("SELECT id FROM vms")]
            left += [
                f"resource {row[0]} {row[1]}"
                for row in conn.execute(
                    "SELECT owner_id, kind FROM resources WHERE owner_id NOT IN"
                    " (SELECT id FROM containers) OR owner_id IN"
                    " (SELECT id FROM containers WHERE owner = 'hcsoci-runc')"
                )
            ]
    return left
