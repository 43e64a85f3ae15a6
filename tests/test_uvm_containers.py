"""Containers inside a utility VM: the LCOW flow (layers over SCSI, Plan9 roots and binds).

One VM for the whole module (``uvm_for_containers``); every test releases
what it created and checks that the VM holds no share, disk or mount of it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures_hns import HnsLab
from fixtures_uvm import assert_vm_gone
from hcsoci import (
    CreateOptions,
    ExitError,
    command,
    command_context,
    context,
    create_container,
    hns,
    images,
    oci,
    release_resources,
)
from hcsoci.cow import ProcessParameters
from hcsoci.errors import NotFoundError
from hcsoci.gcs import protocol
from hcsoci.gcs.connection import GuestError, GuestNotFoundError
from hcsoci.resources import Resources
from hcsoci.store import open_store, state_root
from hcsoci.uvm import BootAssets, UtilityVM, UVMOptions, VMPlan9Share, VMSCSIDisk, create
from hcsoci.uvm.container import VMContainer
from hcsoci.uvm.placement import GUEST_ROOT

SpecFactory = Callable[..., oci.Spec]


@pytest.fixture(scope="module")
def vm(uvm_assets: BootAssets, layer_cache: Path) -> Iterator[UtilityVM]:
    options = UVMOptions(id="tc-" + os.urandom(4).hex(), owner="pytest", scsi_luns=6, plan9_slots=4)
    machine = create(context.background(), options)
    machine.start(context.background())
    try:
        yield machine
    finally:
        machine.close()
        assert_vm_gone(machine)


def guest_mounts(vm: UtilityVM) -> list[str]:
    lines = command(vm, "cat", "/proc/self/mounts").output().decode().splitlines()
    return [line.split()[1] for line in lines]


def assert_vm_clean(vm: UtilityVM) -> None:
    assert [a.host_path for a in vm.scsi.attachments()] == []
    assert vm.plan9.shares() == []
    assert [m for m in guest_mounts(vm) if m.startswith("/run/gcs")] == []
    assert command(vm, "ls", GUEST_ROOT).output().strip() == b""


def make(vm: UtilityVM, spec: oci.Spec) -> tuple[VMContainer, Resources]:
    container, resources = create_container(
        context.background(), CreateOptions(spec=spec, hosting_system=vm)
    )
    assert isinstance(container, VMContainer)
    return container, resources


def release(vm: UtilityVM, resources: Resources) -> None:
    release_resources(context.background(), resources, vm, True)


def test_layers_init_log_exec_and_kill(vm: UtilityVM, container_spec: SpecFactory) -> None:
    ctx = context.background()
    container, resources = make(vm, container_spec(["sh", "-c", "echo hello-init; sleep 300"]))
    try:
        container.start(ctx)
        guest_log = container.log_path
        deadline = time.monotonic() + 10
        while b"hello-init" not in command(vm, "cat", guest_log).output():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # exec through Cmd: output, exit code
        assert command(container, "cat", "/etc/passwd").output().startswith(b"root:")
        props = container.properties(ctx)
        assert props.state == "running" and props.init_pid > 0 and props.processes
        assert props.memory_usage_bytes is not None and props.memory_usage_bytes > 0
        assert props.cpu_usage_ns is not None and props.cpu_usage_ns > 0
        with pytest.raises(ExitError) as raised:
            command(container, "sh", "-c", "exit 7").run()
        assert raised.value.exit_code == 7
        # writes land in the scratch, not in the layer
        command(container, "sh", "-c", "echo x > /written").run()
        assert command(container, "cat", "/written").output() == b"x\n"
        # context kill -> 137
        kill_ctx, cancel = context.with_cancel(ctx)
        cmd = command_context(kill_ctx, container, "sleep", "300")
        cmd.start()
        time.sleep(0.5)
        cancel()
        with pytest.raises(ExitError) as killed:
            cmd.wait()
        assert killed.value.exit_code == 137
        container.terminate(ctx)
        container.wait()
        assert container.properties(ctx).state == "stopped"
    finally:
        container.close()
        release(vm, resources)
    assert_vm_clean(vm)


def test_a_vm_container_gets_its_own_etc_files(vm: UtilityVM, container_spec: SpecFactory) -> None:
    spec = container_spec(["sh", "-c", "cat /etc/hostname /etc/hosts /etc/resolv.conf"])
    spec.hostname = "vmweb"
    container, resources = make(vm, spec)
    try:
        cmd = command(container, "ignored")
        cmd.spec = None
        out = cmd.output().decode()
    finally:
        container.close()
        release(vm, resources)
    assert out.startswith("vmweb\n127.0.0.1\tlocalhost\n")
    assert "nameserver" not in out  # no network: no name server, never the host's
    assert_vm_clean(vm)


def test_init_through_cmd_relays_stdio(vm: UtilityVM, container_spec: SpecFactory) -> None:
    container, resources = make(vm, container_spec(["sh", "-c", "cat; echo err >&2; exit 3"]))
    try:
        cmd = command(container, "ignored")
        cmd.spec = None
        cmd.stdin = io.BytesIO(b"from-stdin\n")
        cmd.stdout, cmd.stderr = io.BytesIO(), io.BytesIO()
        with pytest.raises(ExitError) as raised:
            cmd.run()
        assert raised.value.exit_code == 3
        assert cmd.stdout.getvalue() == b"from-stdin\n"
        assert cmd.stderr.getvalue() == b"err\n"
    finally:
        container.close()
        release(vm, resources)
    assert_vm_clean(vm)


def test_bridge_container_ops(vm: UtilityVM, container_spec: SpecFactory) -> None:
    """The agent's container requests, straight through the GuestConnection."""
    ctx = context.background()
    gcs = vm.gcs
    assert gcs.version == protocol.FILES_VERSION == max(protocol.PROTOCOL_VERSIONS)
    spec = container_spec(["sh", "-c", "read line; echo got-$line; exit 5"])
    container, resources = make(vm, spec)
    cid = container.id()
    try:
        with pytest.raises(GuestError, match="in use"):  # create_container registered it
            gcs.create_container(ctx, cid, container.root)
        other = "/run/gcs/c/not-made"
        for outside in ("/etc/passwd", f"{other}/../../../../etc/passwd", f"{other}x/etc/hosts"):
            with pytest.raises(GuestError, match="not inside the bundle"):
                gcs.create_container(ctx, "not-made", other, None, {outside: "x\n"})
        assert command(vm, "cat", "/etc/passwd").output() != b"x\n"
        assert command(vm, "sh", "-c", f"test -e {other} || echo none").output() == b"none\n"
        with pytest.raises(GuestNotFoundError):
            gcs.start_container(ctx, "no-such-container", ProcessParameters(command_args=["x"]))
        stdio = ProcessParameters(
            command_args=["runc"], create_stdin_pipe=True, create_stdout_pipe=True
        )
        init = gcs.start_container(ctx, cid, stdio)
        assert init.container_pid > 0
        state = gcs.container_state(ctx, cid)
        assert (state.status, state.pid, state.bundle) == (
            "running",
            init.container_pid,
            container.root,
        )
        assert init.container_pid in state.processes
        # exec; SIGKILL through the runc exec handle reaches the process: 128 + 9
        sleeper = gcs.exec_in_container(
            ctx, cid, {"args": ["sleep", "300"], "cwd": "/", "env": ["PATH=/bin"]}, stdio
        )
        assert sleeper.signal(ctx, 9)
        sleeper.wait()
        assert sleeper.exit_code() == 137
        sleeper.close()
        stdin, stdout, _ = init.stdio()
        assert stdin is not None and stdout is not None
        stdin.write(b"hello\n")
        init.close_stdin(ctx)
        assert stdout.read() == b"got-hello\n"
        assert gcs.wait_container(cid, timeout=30) == 5  # the container_exit notification
        init.wait()
        assert init.exit_code() == 5
        init.close()
        assert gcs.container_state(ctx, cid).status == "stopped"
        assert gcs.delete_container(ctx, cid) is True
        with pytest.raises(GuestNotFoundError):
            gcs.container_state(ctx, cid)
        assert gcs.delete_container(ctx, cid) is False
    finally:
        container.close()
        release(vm, resources)
    assert_vm_clean(vm)


def test_plan9_root_and_single_file_bind(
    vm: UtilityVM, busybox_image: images.Image, tmp_path: Path
) -> None:
    ctx = context.background()
    secret = tmp_path / "data" / "message.txt"
    secret.parent.mkdir()
    secret.write_text("through-plan9\n")
    (secret.parent / "hidden.txt").write_text("no")
    spec = images.spec_for_image(busybox_image, ["sleep", "300"])
    spec.windows = None
    spec.root = oci.Root(path=busybox_image.layer_folders[0], readonly=True)
    spec.mounts = [
        *(spec.mounts or []),
        oci.Mount(
            destination="/etc/hostname",  # exists: the root is read-only
            type="bind",
            source=str(secret),
            options=["rbind", "ro"],
        ),
    ]
    container, resources = make(vm, spec)
    try:
        container.start(ctx)
        assert command(container, "cat", "/etc/hostname").output() == b"through-plan9\n"
        for target in ("/etc/hostname", "/new-file"):  # read-only bind, read-only root
            with pytest.raises(ExitError):
                command(container, "sh", "-c", f"echo x > {target}").run()
        # the restricted share shows only the one file
        share_dirs = [s for s in vm.plan9.shares() if s.restrict]
        assert len(share_dirs) == 1 and share_dirs[0].allowed_names == ("message.txt",)
        assert len(resources.find(VMPlan9Share)) == 2
    finally:
        container.close()
        release(vm, resources)
    assert secret.read_text() == "through-plan9\n"
    assert_vm_clean(vm)


ENGINE_FILES = ("hosts", "hostname", "resolv.conf", ".containerenv")
"""The single files an engine binds from a container's own directory (podman's userdata)."""


def test_single_file_binds_of_one_directory_take_one_slot(
    vm: UtilityVM, container_spec: SpecFactory, tmp_path: Path
) -> None:
    """Four single-file binds from one directory: one restricted share (one slot) per
    container, showing the guest those four files and nothing else of the directory."""
    ctx = context.background()
    made: list[tuple[VMContainer, Resources]] = []
    try:
        for number in range(2):  # the module's VM has 4 slots: a share per file would need 8
            folder = tmp_path / f"userdata{number}"
            folder.mkdir()
            for name in ENGINE_FILES:
                (folder / name).write_text(f"{name} of {number}\n")
            (folder / "unlisted").write_text("not for the guest\n")
            spec = container_spec(["sleep", "300"])
            spec.mounts = [
                *(spec.mounts or []),
                oci.Mount(destination="/files", type="tmpfs", source="tmpfs"),
                *(
                    oci.Mount(
                        destination=f"/files/{name}",
                        type="bind",
                        source=str(folder / name),
                        options=["rbind", "rprivate"],
                    )
                    for name in ENGINE_FILES
                ),
            ]
            made.append(make(vm, spec))
            made[-1][0].start(ctx)
        shares = vm.plan9.shares()
        assert len(shares) == 2, shares
        for number, share in enumerate(shares):
            assert share.restrict and share.allowed_names == ENGINE_FILES
            assert share.host_path == str(tmp_path / f"userdata{number}")
        for number, (container, resources) in enumerate(made):
            assert len(resources.find(VMPlan9Share)) == 1
            script = "for f in /files/*; do cat $f; done; cat /files/.containerenv"
            expected = "".join(f"{name} of {number}\n" for name in sorted(ENGINE_FILES[:3]))
            expected += f".containerenv of {number}\n"
            assert command(container, "sh", "-c", script).output().decode() == expected
            guest_dir = f"{GUEST_ROOT}/{container.id()}/files/0"
            listing = command(vm, "ls", "-a", guest_dir).output().decode().split()
            assert sorted(listing) == sorted([".", "..", *ENGINE_FILES]), listing
            with pytest.raises(ExitError):
                command(vm, "cat", f"{guest_dir}/unlisted").run()
            with pytest.raises(ExitError):  # nor can the guest add a file beside them
                command(vm, "touch", f"{guest_dir}/added").run()
        # the first container's share goes with it, exactly; the second keeps its own
        first, first_resources = made.pop(0)
        first.close()
        release(vm, first_resources)
        assert [s.host_path for s in vm.plan9.shares()] == [str(tmp_path / "userdata1")]
        second = made[0][0]
        assert command(second, "cat", "/files/hosts").output() == b"hosts of 1\n"
    finally:
        for container, resources in made:
            container.close()
            release(vm, resources)
    assert not (tmp_path / "userdata0" / "added").exists()
    assert_vm_clean(vm)


def test_shared_layer_shares_the_disk_and_all_false_keeps_shares(
    vm: UtilityVM, container_spec: SpecFactory
) -> None:
    ctx = context.background()
    first, first_resources = make(vm, container_spec(["sleep", "300"]))
    second, second_resources = make(vm, container_spec(["sleep", "300"]))
    try:
        layer_disks = [a for a in vm.scsi.attachments() if a.read_only]
        assert len(layer_disks) == 1 and layer_disks[0].ref_count == 2
        assert len(vm.scsi.attachments()) == 3  # one layer, two scratches
        # all=False: the VM shares stay (the VM is going away)
        release_resources(ctx, second_resources, vm, False)
        assert len(vm.scsi.attachments()) == 3
        assert {r.kind for r in second_resources.items()} >= {VMSCSIDisk.kind}
        release(vm, second_resources)
        assert layer_disks[0].ref_count == 1
        assert len(vm.scsi.attachments()) == 2
    finally:
        first.close()
        second.close()
        release(vm, first_resources)
        release(vm, second_resources)
    assert_vm_clean(vm)


def test_missing_layer_is_a_clear_error_and_leaves_nothing(
    vm: UtilityVM, container_spec: SpecFactory, tmp_path: Path
) -> None:
    spec = container_spec(["true"])
    assert spec.windows is not None and spec.windows.layer_folders is not None
    missing = str(tmp_path / "no-such-layer")
    spec.windows.layer_folders = [missing, *spec.windows.layer_folders]
    with pytest.raises(NotFoundError, match=r"layer_folders\[0\].*no-such-layer") as raised:
        make(vm, spec)
    assert len(raised.value.resources) == 0  # type: ignore[attr-defined]
    assert_vm_clean(vm)


def test_cli_run_isolation_vm(layer_cache: Path, tmp_path: Path, lab: HnsLab) -> None:
    """One VM for one run, on a network: its own endpoint, deleted with everything else."""
    network = lab.network()
    env = {**os.environ, "HCSOCI_IMAGES": str(tmp_path / "images")}
    done = subprocess.run(
        [sys.executable, "-m", "hcsoci.cli.main", "run", "--isolation", "vm", "--name", "cli-vm",
         "--network", network.name,
         "--", "sh", "-c", "echo hi-from-vm; ip -4 -o addr show eth0; exit 4"],
        capture_output=True,
        timeout=300,
        env=env,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    hello, address = done.stdout.decode().splitlines()
    assert hello == "hi-from-vm"
    assert f"inet {network.subnet.rsplit('.', 1)[0]}." in address
    assert hns.list_endpoints(network.id) == []
    assert open_store().query("SELECT id FROM containers WHERE id = 'cli-vm'") == []
    # No record outlives the VM (the in-VM ones that release(all=False) left went with it).
    assert open_store().query("SELECT kind FROM resources WHERE owner_id = 'cli-vm'") == []
    assert open_store().query("SELECT id FROM vms WHERE owner = 'hcsoci'") == []
    assert not (state_root() / "scratch" / "cli-vm").exists()
