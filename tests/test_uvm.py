"""The utility VM: processes in the guest, Plan9 shares, SCSI disks, resources.

All tests here share one booted VM (the module-scoped ``uvm`` fixture).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures_hns import HnsLab, in_netns
from hcsoci import ExitError, ProcessParameters, command, command_context, context, hns, oci
from hcsoci.errors import InvalidArgumentError, NotFoundError, StateError
from hcsoci.mounts import mounts_under
from hcsoci.resources import Resources, release_resources
from hcsoci.uvm import (
    SCSIControllerFullError,
    UtilityVM,
    UVMOptions,
    VMPlan9Share,
    VMSCSIDisk,
    create,
)


def guest_output(vm: UtilityVM, *args: str) -> bytes:
    return command(vm, args[0], *args[1:]).output()


def guest_mounted(vm: UtilityVM, path: str) -> bool:
    mounts = guest_output(vm, "cat", "/proc/self/mounts").decode().splitlines()
    return any(line.split()[1] == path for line in mounts)


# -- processes ----------------------------------------------------------------


def test_process_runs_on_the_guest_kernel(uvm: UtilityVM) -> None:
    guest_boot_id = guest_output(uvm, "cat", "/proc/sys/kernel/random/boot_id").strip()
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()
    assert guest_boot_id == uvm.boot_id.encode()
    assert guest_boot_id != host_boot_id


def test_default_vcpus_are_one_under_tcg_and_two_under_kvm(uvm: UtilityVM) -> None:
    # Two vCPUs under TCG livelock the guest now and then (docs/uvm.md).
    online = guest_output(uvm, "cat", "/sys/devices/system/cpu/online").strip()
    assert online == (b"0-1" if uvm.accel == "kvm" else b"0"), online


def test_exit_code_and_stderr(uvm: UtilityVM) -> None:
    cmd = command(uvm, "sh", "-c", "echo oops >&2; exit 3")
    cmd.stderr = io.BytesIO()
    with pytest.raises(ExitError) as raised:
        cmd.run()
    assert raised.value.exit_code == 3
    assert cmd.stderr.getvalue() == b"oops\n"


def test_missing_executable_is_a_clear_error(uvm: UtilityVM) -> None:
    with pytest.raises(Exception, match="no-such-binary"):
        command(uvm, "no-such-binary-xyz").run()


def test_stdin_larger_than_every_window_round_trips(uvm: UtilityVM) -> None:
    data = bytes(range(256)) * (48 * 1024)  # 12 MiB: three times the stream window
    cmd = command(uvm, "cat")
    cmd.stdin = io.BytesIO(data)
    assert cmd.output() == data


def test_slow_reader_does_not_stall_other_processes(uvm: UtilityVM) -> None:
    ctx = context.background()
    chatty = uvm.create_process(
        ctx,
        ProcessParameters(
            command_args=["sh", "-c", "cat /dev/zero"],
            environment={"PATH": "/usr/bin:/bin"},
            create_stdout_pipe=True,
        ),
    )
    try:
        # Nobody reads the chatty stdout: its window fills up and it stalls,
        # but the bridge keeps serving everyone else.
        for _ in range(3):
            assert guest_output(uvm, "echo", "still here") == b"still here\n"
    finally:
        assert chatty.kill(ctx)
        chatty.wait()
        chatty.close()
    assert chatty.exit_code() == 128 + 9


def test_context_kills_the_guest_process(uvm: UtilityVM) -> None:
    ctx, cancel = context.with_timeout(context.background(), 1.0)
    try:
        cmd = command_context(ctx, uvm, "sleep", "600")
        with pytest.raises(ExitError) as raised:
            cmd.run()
    finally:
        cancel()
    assert raised.value.exit_code == 128 + 9


def test_terminal_process_and_resize(uvm: UtilityVM) -> None:
    ctx = context.background()
    process = uvm.create_process(
        ctx,
        ProcessParameters(
            command_args=["sh", "-c", "sleep 0.5; stty size"],
            environment={"PATH": "/usr/bin:/bin"},
            emulate_console=True,
            console_size=(24, 80),
            create_stdout_pipe=True,
        ),
    )
    try:
        process.resize_console(ctx, 100, 40)
        _, stdout, stderr = process.stdio()
        assert stderr is None and stdout is not None
        output = stdout.read()
        process.wait()
    finally:
        process.close()
    assert output.strip() == b"40 100"
    assert process.exit_code() == 0


def test_create_process_rejects_oci_config(uvm: UtilityVM) -> None:
    with pytest.raises(InvalidArgumentError, match="ProcessParameters"):
        uvm.create_process(context.background(), {"args": ["true"]})


# -- Plan9 --------------------------------------------------------------------


def test_plan9_read_only_share(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    (tmp_path / "hello.txt").write_text("from the host\n")
    share = uvm.add_plan9(ctx, str(tmp_path), "/run/shares/ro", read_only=True)
    try:
        assert guest_output(uvm, "cat", "/run/shares/ro/hello.txt") == b"from the host\n"
        with pytest.raises(ExitError):
            command(uvm, "touch", "/run/shares/ro/new").run()
        assert not (tmp_path / "new").exists()
    finally:
        uvm.remove_plan9(ctx, share)
    assert not guest_mounted(uvm, "/run/shares/ro")
    assert mounts_under(uvm.plan9.slot_dir(share.slot)) == []


def test_plan9_writable_share(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    share = uvm.add_plan9(ctx, str(tmp_path), "/run/shares/rw", read_only=False)
    try:
        command(uvm, "sh", "-c", "echo written > /run/shares/rw/out.txt").run()
    finally:
        uvm.remove_plan9(ctx, share)
    assert (tmp_path / "out.txt").read_text() == "written\n"


def test_plan9_restricted_share_shows_only_allowed_names(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    for name in ("allowed.txt", "secret.txt", "other.txt"):
        (tmp_path / name).write_text(name)
    share = uvm.add_plan9(
        ctx, str(tmp_path), "/run/shares/one", True, restrict=True, allowed_names=["allowed.txt"]
    )
    try:
        assert guest_output(uvm, "ls", "/run/shares/one") == b"allowed.txt\n"
        assert guest_output(uvm, "cat", "/run/shares/one/allowed.txt") == b"allowed.txt"
        with pytest.raises(ExitError):
            command(uvm, "touch", "/run/shares/one/added").run()
    finally:
        uvm.remove_plan9(ctx, share)


def test_plan9_bad_input(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    before = uvm.plan9.shares()
    with pytest.raises(NotFoundError, match="host_path"):
        uvm.add_plan9(ctx, str(tmp_path / "missing"), "/run/x", True)
    with pytest.raises(InvalidArgumentError, match="uvm_path"):
        uvm.add_plan9(ctx, str(tmp_path), "relative", True)
    with pytest.raises(NotFoundError, match="nope"):
        uvm.add_plan9(ctx, str(tmp_path), "/run/x", True, restrict=True, allowed_names=["nope"])
    share = uvm.add_plan9(ctx, str(tmp_path), "/run/shares/twice", True)
    uvm.remove_plan9(ctx, share)
    with pytest.raises(NotFoundError, match="no share"):
        uvm.remove_plan9(ctx, share)
    assert uvm.plan9.shares() == before
    assert all(mounts_under(uvm.plan9.slot_dir(s)) == [] for s in range(uvm.plan9.count))


def test_plan9_slots_run_out_with_a_clear_error(uvm: UtilityVM, tmp_path: Path) -> None:
    ctx = context.background()
    shares = []
    try:
        for index in range(uvm.plan9.count):
            shares.append(uvm.add_plan9(ctx, str(tmp_path), f"/run/shares/s{index}", True))
        with pytest.raises(StateError, match="plan9_slots"):
            uvm.add_plan9(ctx, str(tmp_path), "/run/shares/extra", True)
    finally:
        for share in shares:
            uvm.remove_plan9(ctx, share)
    assert uvm.plan9.shares() == []


# -- SCSI ---------------------------------------------------------------------


def test_scsi_disk_is_mounted_and_ref_counted(
    uvm: UtilityVM, ext4_image: Callable[[dict[str, bytes]], Path]
) -> None:
    ctx = context.background()
    image = ext4_image({"layer.txt": b"layer content\n"})
    first = uvm.add_scsi(ctx, str(image), "/run/layers/l1", read_only=True)
    second = uvm.add_scsi(ctx, str(image), "/run/layers/l1", read_only=True)
    assert first is second and first.ref_count == 2
    try:
        assert guest_output(uvm, "cat", "/run/layers/l1/layer.txt") == b"layer content\n"
        uvm.remove_scsi(ctx, str(image))
        assert guest_mounted(uvm, "/run/layers/l1")  # one reference left
    finally:
        uvm.remove_scsi(ctx, str(image))
    assert not guest_mounted(uvm, "/run/layers/l1")
    assert uvm.find_scsi(str(image)) is None
    with pytest.raises(NotFoundError, match="not attached"):
        uvm.remove_scsi(ctx, str(image))


def test_scsi_writable_scratch_disk(
    uvm: UtilityVM, ext4_image: Callable[[dict[str, bytes]], Path]
) -> None:
    ctx = context.background()
    image = ext4_image({})
    uvm.add_scsi(ctx, str(image), "/run/scratch", read_only=False)
    try:
        command(uvm, "sh", "-c", "echo kept > /run/scratch/file; sync").run()
    finally:
        uvm.remove_scsi(ctx, str(image))
    uvm.add_scsi(ctx, str(image), "/run/scratch-again", read_only=True)
    try:
        assert guest_output(uvm, "cat", "/run/scratch-again/file") == b"kept\n"
    finally:
        uvm.remove_scsi(ctx, str(image))


def test_scsi_full_controller_and_bad_paths(
    uvm: UtilityVM, ext4_image: Callable[[dict[str, bytes]], Path], tmp_path: Path
) -> None:
    ctx = context.background()
    with pytest.raises(NotFoundError, match="host_path"):
        uvm.add_scsi(ctx, str(tmp_path / "missing.ext4"), "/run/x")
    images = [ext4_image({}) for _ in range(uvm.scsi.capacity + 1)]
    attached = []
    try:
        for index, image in enumerate(images[:-1]):
            uvm.add_scsi(ctx, str(image), f"/run/disks/d{index}", read_only=True)
            attached.append(image)
        with pytest.raises(SCSIControllerFullError, match="full"):
            uvm.add_scsi(ctx, str(images[-1]), "/run/disks/extra", read_only=True)
    finally:
        for image in attached:
            uvm.remove_scsi(ctx, str(image))
    assert uvm.scsi.attachments() == []


# -- resources ----------------------------------------------------------------


def test_release_resources_all_false_keeps_vm_shares(
    uvm: UtilityVM, tmp_path: Path, ext4_image: Callable[[dict[str, bytes]], Path]
) -> None:
    ctx = context.background()
    image = ext4_image({"f": b"x"})
    resources = Resources("test-release-" + uvm.id())
    share_record = resources.add(VMPlan9Share(vm_id=uvm.id()))
    share = uvm.add_plan9(ctx, str(tmp_path), "/run/shares/released", True)
    share_record.name = share.name  # type: ignore[attr-defined]
    resources.update(share_record)
    resources.add(VMSCSIDisk(vm_id=uvm.id(), host_path=str(image)))
    uvm.add_scsi(ctx, str(image), "/run/layers/released", read_only=True)

    release_resources(ctx, resources, uvm, all=False)
    assert len(resources) == 2
    assert uvm.find_plan9(share.name) is not None
    assert uvm.find_scsi(str(image)) is not None

    release_resources(ctx, resources, uvm, all=True)
    assert len(resources) == 0
    assert uvm.find_plan9(share.name) is None
    assert uvm.find_scsi(str(image)) is None
    assert not guest_mounted(uvm, "/run/shares/released")
    release_resources(ctx, resources, uvm, all=True)  # again: nothing left, no error


# -- options and assets (no VM of their own) ----------------------------------


def test_missing_boot_assets_say_how_to_build_them(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="hcsoci uvm build-assets"):
        create(context.background(), UVMOptions(assets_dir=str(tmp_path)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_mb", 1), ("cpu_count", -1), ("accel", "hvf"), ("id", "bad id"), ("scsi_luns", 0)],
)
def test_bad_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        create(context.background(), UVMOptions(**{field: value}))  # type: ignore[arg-type]


def test_concurrent_commands(uvm: UtilityVM) -> None:
    results: dict[int, bytes] = {}

    def run(index: int) -> None:
        results[index] = guest_output(uvm, "echo", str(index))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {i: f"{i}\n".encode() for i in range(6)}


# -- networking ---------------------------------------------------------------


def test_vm_namespace_and_host_namespace_share_a_network(uvm: UtilityVM, lab: HnsLab) -> None:
    ctx = context.background()
    network = lab.network()
    vm_endpoint = lab.endpoint(network)
    host_endpoint = lab.endpoint(network)
    host_ns = lab.namespace()
    hns.add_namespace_endpoint(host_ns, host_endpoint.id)
    guest_ns = "gns-" + lab.token
    uvm.add_net_ns(ctx, guest_ns)
    try:
        uvm.add_endpoints_to_ns(ctx, guest_ns, [vm_endpoint])
        [nic] = uvm.net_namespaces()[guest_ns]
        assert Path(f"/sys/class/net/{nic.tap}/master").resolve().name == network.bridge
        addresses = guest_output(uvm, "ip", "-n", guest_ns, "-o", "-4", "addr", "show", "eth0")
        assert f"{vm_endpoint.ip_address}/{vm_endpoint.prefix_length}".encode() in addresses
        ping = ["/.hcsoci/busybox", "ping", "-c", "1", "-W", "10"]
        command(uvm, "ip", "netns", "exec", guest_ns, *ping, host_endpoint.ip_address).run()
        pinged = in_netns(hns.namespace_path(host_ns), "busybox", *ping[1:], vm_endpoint.ip_address)
        assert pinged.returncode == 0, pinged.stderr
    finally:
        uvm.remove_net_ns(ctx, guest_ns)
    assert guest_ns not in uvm.net_namespaces()
    assert not Path(f"/sys/class/net/{nic.tap}").exists()
    with pytest.raises(NotFoundError, match=guest_ns):
        uvm.remove_net_ns(ctx, guest_ns)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("54321", "54321 0 0"),  # a uid no passwd knows: gid 0, as runc
        ("54321:777", "54321 777 777"),
        ("0", "0 0 0"),
        ("root:5", "0 5 5"),
    ],
)
def test_a_user_means_the_same_on_the_host_and_in_the_guest(
    uvm: UtilityVM, user: str, expected: str
) -> None:
    """One rule (hcsoci.gcs.users) on LocalHost and in the guest agent."""
    from hcsoci.local import LocalHost

    outputs = []
    for host in (LocalHost(), uvm):
        cmd = command(host, "sh", "-c", 'echo "$(id -u) $(id -g) $(id -G)"')
        assert cmd.spec is not None
        cmd.spec.user = oci.User(username=user)  # sent as the user string, as written
        outputs.append(cmd.output().decode().split())
    assert outputs[0] == outputs[1], outputs
    assert outputs[0][:2] == expected.split()[:2]
    for host in (LocalHost(), uvm):
        unknown = command(host, "true")
        assert unknown.spec is not None
        unknown.spec.user = oci.User(username="no-such-user-here")
        with pytest.raises(NotFoundError, match="no-such-user-here"):
            unknown.run()
