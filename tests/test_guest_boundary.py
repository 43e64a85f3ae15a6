"""The utility VM as a boundary: the guest sees nothing of the host it was not given.

The guest boots from its own root (the boot assets' initramfs), not from the
host's ``/``: neither a guest process nor a container in the VM (even one that
reaches the guest's root through ``/proc/1/root``) can read the host's
``/etc/shadow``, ``/root`` or state root, and a write anywhere the guest can
write lands on the host only inside what was shared.  QEMU runs under its
seccomp sandbox with its sockets and logs readable by root only.  A frozen or
killed guest fails every waiter within a bounded time.

The module shares one VM (``uvm``); the freeze and kill tests boot their own.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures_uvm import MakeUVM, assert_vm_gone, qemu_processes
from hcsoci import (
    CreateOptions,
    ExitError,
    command,
    context,
    create_container,
    oci,
    release_resources,
)
from hcsoci.errors import HcsociError
from hcsoci.gcs import BridgeClosedError
from hcsoci.resources import Resources
from hcsoci.store import state_root
from hcsoci.uvm import UtilityVM
from hcsoci.uvm.assets import GUEST_HOSTNAME
from hcsoci.uvm.container import VMContainer

SpecFactory = Callable[..., oci.Spec]

NOBODY = "64123"
"""A uid and gid nobody on this host has."""


def guest_read(host: Any, path: str) -> bytes | None:
    """The content of ``path`` as ``host`` (a VM or a container) sees it; None if unreadable."""
    cmd = command(host, "cat", path)
    cmd.stderr = io.BytesIO()
    try:
        return cmd.output()
    except ExitError:
        return None


def guest_listing(host: Any, path: str) -> list[str] | None:
    """The names in directory ``path`` as ``host`` sees it; None when it cannot be listed."""
    cmd = command(host, "ls", "-A", path)
    cmd.stderr = io.BytesIO()
    try:
        return cmd.output().decode().split()
    except ExitError:
        return None


def assert_host_secrets_hidden(host: Any, prefix: str = "") -> None:
    """``host`` cannot read the host's secrets at ``prefix`` + their host paths."""
    shadow = Path("/etc/shadow").read_bytes()
    assert shadow, "the host has no /etc/shadow to compare with"
    assert guest_read(host, prefix + "/etc/shadow") in (None, b""), "the host's shadow file"
    for name in ("/etc/hostname", "/etc/passwd", "/etc/group"):
        seen = guest_read(host, prefix + name)
        assert seen != Path(name).read_bytes(), f"{name} is the host's"
    host_root = set(os.listdir("/root"))
    assert host_root, "the host's /root is empty: nothing to compare with"
    assert not host_root & set(guest_listing(host, prefix + "/root") or [])
    assert guest_listing(host, prefix + str(state_root())) is None
    assert guest_listing(host, prefix + "/var/lib/hcsoci") is None


@pytest.fixture
def container(uvm: UtilityVM, container_spec: SpecFactory) -> Iterator[VMContainer]:
    """A running container in ``uvm`` that shares the guest's PID namespace, with CAP_SYS_PTRACE.

    It stands for a container process that escaped: through ``/proc/1/root``
    it sees the guest's own root file system.
    """
    spec = container_spec(["sleep", "600"])
    assert spec.linux is not None and spec.process is not None
    spec.linux.namespaces = [ns for ns in spec.linux.namespaces or [] if ns.type != "pid"]
    caps = spec.process.capabilities
    assert caps is not None
    for field in ("bounding", "effective", "permitted"):
        setattr(caps, field, [*(getattr(caps, field) or []), "CAP_SYS_PTRACE"])
    ctx = context.background()
    made, resources = create_container(ctx, CreateOptions(spec=spec, hosting_system=uvm))
    try:
        assert isinstance(made, VMContainer)
        made.start(ctx)
        yield made
    finally:
        with contextlib.suppress(HcsociError):  # not started, or exited already
            made.terminate(ctx)
            made.wait()
        made.close()
        release_resources(ctx, resources, uvm, True)


# -- the guest's own root ------------------------------------------------------


def test_guest_root_is_its_own(uvm: UtilityVM) -> None:
    assert guest_read(uvm, "/etc/hostname") == f"{GUEST_HOSTNAME}\n".encode()
    assert_host_secrets_hidden(uvm)
    assert guest_listing(uvm, str(uvm.state_dir)) is None
    mounts = guest_read(uvm, "/proc/mounts")
    assert mounts is not None
    assert b" 9p " not in mounts, "a Plan9 share nobody added"
    root = [line.split() for line in mounts.decode().splitlines() if line.split()[1] == "/"]
    assert root and root[-1][2] == "overlay" and "lowerdir=/seed," in root[-1][3]


def test_guest_runs_its_own_runc_with_seccomp(uvm: UtilityVM) -> None:
    version = command(uvm, "runc", "--version").output().decode()
    host = subprocess.run(["runc", "--version"], capture_output=True, text=True).stdout
    assert version == host  # the host's runc, copied into the guest root
    assert "libseccomp: 2." in version


def test_container_escaping_to_the_guest_root_sees_no_host_file(
    uvm: UtilityVM, container: VMContainer
) -> None:
    # The escape works: through /proc/1/root the container sees the guest's root...
    assert guest_read(container, "/proc/1/root/etc/hostname") == f"{GUEST_HOSTNAME}\n".encode()
    assert guest_read(container, "/proc/1/root/.hcsoci/gcs/agent.py") is not None
    # ...and in it nothing of the host's.
    assert_host_secrets_hidden(container, "/proc/1/root")
    assert_host_secrets_hidden(container)
    status = guest_read(container, "/proc/self/status")
    assert status is not None and b"Seccomp:\t2" in status  # runc applied the spec's filter


def test_guest_writes_reach_the_host_only_through_a_share(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    shared = tmp_path / "shared"
    shared.mkdir()
    share = uvm.add_plan9(ctx, str(shared), "/run/boundary-rw", read_only=False)
    marker = "hcsoci-boundary-marker-" + secrets.token_hex(6)
    try:
        script = (
            "for d in / /etc /root /tmp /run /var /mnt /usr /usr/bin /dev/shm /.hcsoci "
            "$(cut -d' ' -f2 /proc/mounts); do "
            f'echo x 2>/dev/null > "$d/{marker}" && echo "$d"; done; true'
        )
        written = set(command(uvm, "sh", "-c", script).output().decode().split())
        assert {"/", "/etc", "/root", "/tmp", "/run", "/run/boundary-rw"} <= written, written
        assert (shared / marker).read_bytes() == b"x\n"  # the share is the host's directory
        found = subprocess.run(
            ["find", "/", "-xdev", "-name", marker],
            capture_output=True,
            text=True,
            timeout=240,
        ).stdout.split()
        assert str(shared / marker) in found
        # The only other place it shows is the Plan9 slot: a bind mount of that directory.
        assert all(os.path.samefile(path, shared / marker) for path in found), found
    finally:
        uvm.remove_plan9(ctx, share)


def test_plan9_share_shows_exactly_its_directory(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "one.txt").write_bytes(b"one")
    (source / "sub" / "two.txt").write_bytes(b"two")
    share = uvm.add_plan9(ctx, str(source), "/run/boundary-ro", read_only=True)
    try:
        assert sorted(guest_listing(uvm, "/run/boundary-ro") or []) == ["one.txt", "sub"]
        assert guest_read(uvm, "/run/boundary-ro/sub/two.txt") == b"two"
        assert guest_listing(uvm, "/run/boundary-ro/..") is not None  # the guest's /run
        assert guest_read(uvm, "/run/boundary-ro/../../etc/shadow") is None
        with pytest.raises(ExitError):
            command(uvm, "touch", "/run/boundary-ro/new").run()
    finally:
        uvm.remove_plan9(ctx, share)
    restricted = uvm.add_plan9(
        ctx, str(source), "/run/boundary-one", restrict=True, allowed_names=["one.txt"]
    )
    try:
        assert guest_listing(uvm, "/run/boundary-one") == ["one.txt"]
        assert guest_read(uvm, "/run/boundary-one/sub/two.txt") is None
    finally:
        uvm.remove_plan9(ctx, restricted)


# -- QEMU ----------------------------------------------------------------------


def as_nobody(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` as an unprivileged user with no groups (through ``sh``: see below)."""
    # setpriv still holds root's capabilities during its own execve: exec again from sh.
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*prefix, "sh", "-c", 'exec "$@"', "sh", *args], capture_output=True, timeout=60
    )


def test_qemu_files_are_root_only(uvm: UtilityVM) -> None:
    files = {
        "qmp.sock": uvm.state_dir / "qmp.sock",
        "gcs.sock": uvm.state_dir / "gcs.sock",
        "qemu.pid": uvm.state_dir / "qemu.pid",
        "console.log": Path(uvm.console_log),
        "qemu.log": uvm.log_dir / "qemu.log",
    }
    for name, path in files.items():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{name} has mode {mode:o}"
    assert stat.S_IMODE(uvm.state_dir.stat().st_mode) == 0o700
    # The same user can read a world-readable file: the refusals below are the files' doing.
    assert as_nobody("cat", "/etc/hostname").returncode == 0
    assert as_nobody("cat", uvm.console_log).returncode != 0
    connect = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    refused = as_nobody("python3", "-c", connect, str(files["qmp.sock"]))
    assert refused.returncode != 0 and b"PermissionError" in refused.stderr
    refused = as_nobody("python3", "-c", connect, str(files["gcs.sock"]))
    assert refused.returncode != 0 and b"PermissionError" in refused.stderr


def test_qemu_is_sandboxed_and_has_only_the_devices_it_uses(uvm: UtilityVM) -> None:
    status = Path(f"/proc/{uvm.pid()}/status").read_text()
    assert "Seccomp:\t2" in status  # -sandbox on
    cmdline = Path(f"/proc/{uvm.pid()}/cmdline").read_bytes().split(b"\0")
    assert not any(b"path=/," in arg or b"hostroot" in arg for arg in cmdline)
    devices = [device for bus in uvm.qmp("query-pci") for device in bus["devices"]]
    classes = {device["class_info"].get("desc", "") for device in devices}
    assert not classes & {"VGA controller", "USB controller", "Ethernet controller"}, classes
    names = {device["qdev_id"] for device in devices if device.get("qdev_id")}
    assert {"vser0", "scsi0"} <= names


# -- a frozen or killed guest: every waiter fails, in bounded time ---------------


def _outstanding(
    vm: UtilityVM, container: VMContainer
) -> list[tuple[threading.Thread, list[BaseException]]]:
    """A container ``wait()`` and a ``Cmd.run()`` in the guest, each waiting on a thread."""
    cmd = command(vm, "sleep", "600")
    cmd.start()  # the rest of its run(): wait()
    waiters = []
    for target in (container.wait, cmd.wait):
        errors: list[BaseException] = []

        def run(target: Callable[[], None] = target, errors: list[BaseException] = errors) -> None:
            try:
                target()
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        waiters.append((thread, errors))
    time.sleep(0.5)
    assert all(thread.is_alive() for thread, _ in waiters)
    return waiters


def _boot_with_container(
    make_uvm: MakeUVM, container_spec: SpecFactory
) -> tuple[UtilityVM, VMContainer, Resources]:
    vm = make_uvm(heartbeat_interval=1.0, heartbeat_misses=5, request_timeout=120.0)
    ctx = context.background()
    made, resources = create_container(
        ctx, CreateOptions(spec=container_spec(["sleep", "600"]), hosting_system=vm)
    )
    assert isinstance(made, VMContainer)
    made.start(ctx)
    return vm, made, resources


def _finish_within(seconds: float, action: Callable[[], None]) -> None:
    done: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            done.append(None)
        except BaseException as err:
            done.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"{action} did not complete within {seconds} s"
    if done[0] is not None:
        raise done[0]


def test_frozen_guest_fails_every_waiter(make_uvm: MakeUVM, container_spec: SpecFactory) -> None:
    vm, container, resources = _boot_with_container(make_uvm, container_spec)
    try:
        waiters = _outstanding(vm, container)
        vm.pause(context.background())  # QMP stop: the guest's CPUs halt, QEMU stays
        start = time.monotonic()
        for thread, errors in waiters:
            thread.join(max(0.1, 30 - (time.monotonic() - start)))
            assert not thread.is_alive(), "a waiter still hangs on the frozen guest"
            assert errors and isinstance(errors[0], BridgeClosedError), errors
            message = str(errors[0])
            assert vm.id() in message and "has not answered for" in message, message
            assert "\n--- console (" in message, message  # what the guest said last
        assert not vm.is_running()
        with pytest.raises(BridgeClosedError):
            command(vm, "true").run()
        _finish_within(60, lambda: release_resources(context.background(), resources, vm, True))
        container.close()
        _finish_within(60, vm.close)
        assert_vm_gone(vm)
    finally:
        for pid in qemu_processes(vm.id()):  # whatever happened, no QEMU is left
            os.kill(pid, signal.SIGKILL)


def test_killed_qemu_fails_every_waiter(make_uvm: MakeUVM, container_spec: SpecFactory) -> None:
    vm, container, resources = _boot_with_container(make_uvm, container_spec)
    waiters = _outstanding(vm, container)
    os.kill(vm.pid(), signal.SIGKILL)
    start = time.monotonic()
    for thread, errors in waiters:
        thread.join(max(0.1, 30 - (time.monotonic() - start)))
        assert not thread.is_alive(), "a waiter still hangs on the dead VM"
        assert errors and isinstance(errors[0], BridgeClosedError), errors
        assert vm.id() in str(errors[0]) and "QEMU" in str(errors[0]), errors
    _finish_within(60, lambda: release_resources(context.background(), resources, vm, True))
    container.close()
    _finish_within(60, vm.close)
    assert_vm_gone(vm)
