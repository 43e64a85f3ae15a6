"""VM templates: restored VMs work as booted ones, clones are their own, bad templates fall back.

The module saves one template (``ensure_template``, a boot when none exists)
and keeps a copy of it; every bad-input test damages a fresh copy of that
copy for real (truncated, bytes flipped, another asset key or QEMU recorded)
and starts with ``template="require"`` (fails at once, nothing left) or
``"auto"`` (falls back to a boot and saves a good template again).  Only a
guest agent that never answers after a restore is simulated.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures_containers import SpecFactory
from fixtures_hns import HnsLab
from fixtures_uvm import MakeUVM, assert_vm_gone, qemu_processes
from hcsoci import Cmd, CreateOptions, command, context, create_container, oci, release_resources
from hcsoci.gcs.connection import GuestConnection, GuestTimeoutError
from hcsoci.uvm import BootAssets, UtilityVM, UVMOptions, UVMStartError, ensure_template
from hcsoci.uvm.accel import qemu_version
from hcsoci.uvm.template import file_crc32

CTX = context.background()
TEMPLATE_OPTIONS: dict[str, Any] = {"memory_mb": 768}
"""The module's template: options of its own, so it never touches the default one."""


@pytest.fixture(scope="module")
def saved(uvm_assets: BootAssets) -> Iterator[tuple[Path, Path]]:
    """The module's template folder and a good copy of it."""
    folder = ensure_template(CTX, UVMOptions(**TEMPLATE_OPTIONS))
    backup = Path(tempfile.mkdtemp(prefix="hcsoci-template-backup-"))
    shutil.copytree(folder, backup / "t")
    try:
        yield folder, backup / "t"
    finally:
        shutil.rmtree(backup)


def put_back(folder: Path, good: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(good, folder)
    os.chmod(folder, 0o700)


@pytest.fixture
def template(saved: tuple[Path, Path]) -> Iterator[Path]:
    """The module's template folder, fresh from the good copy; put back afterwards."""
    folder, good = saved
    put_back(folder, good)
    try:
        yield folder
    finally:
        put_back(folder, good)


def state_file(folder: Path) -> Path:
    meta = json.loads((folder / "template.json").read_text())
    return folder / str(meta["state"])


def rewrite_meta(folder: Path, **changes: Any) -> None:
    meta_path = folder / "template.json"
    meta = json.loads(meta_path.read_text())
    for key, value in changes.items():
        if key in meta["identity"]:
            meta["identity"][key] = value
        else:
            meta[key] = value
    meta_path.write_text(json.dumps(meta))


def started(vm: UtilityVM) -> UtilityVM:
    vm.start(CTX)
    return vm


@pytest.fixture
def vms(make_uvm: MakeUVM) -> Callable[..., UtilityVM]:
    """``vms(**options)``: VMs on the module's template options, made (not started) by the
    test through ``make_uvm``, so closed and checked at teardown."""

    def make(**overrides: Any) -> UtilityVM:
        return make_uvm(start=False, **{**TEMPLATE_OPTIONS, **overrides})

    return make


# -- restored VMs are VMs ------------------------------------------------------


@pytest.mark.parametrize("mode", ["require", "never"], ids=["restored", "booted"])
def test_containers_plan9_scsi_and_nics_work_the_same(
    mode: str,
    template: Path,
    vms: Callable[..., UtilityVM],
    container_spec: SpecFactory,
    lab: HnsLab,
    layer_cache: Path,
    tmp_path: Path,
) -> None:
    vm = started(vms(template=mode))
    assert vm.restored == (mode == "require")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    network = lab.network()
    endpoint = lab.endpoint(network)
    spec = container_spec(
        [
            "sh",
            "-c",
            "cat /mnt/shared/note; cat /sys/class/net/eth0/address; "
            "ip -4 -o addr show eth0 | awk '{print $4}'; "
            # Any answer from the host's side of the bridge fills the neighbour table.
            f"nc -w 3 {endpoint.gateway_address} 9 </dev/null; "
            f"ip neigh show {endpoint.gateway_address}; true",
        ],
    )
    assert spec.mounts is not None
    spec.mounts.append(
        oci.Mount(
            destination="/mnt/shared", source=str(shared), type="bind", options=["rbind", "ro"]
        )
    )
    assert spec.windows is not None
    spec.windows.network = oci.WindowsNetwork(endpoint_list=[endpoint.id])
    container, resources = create_container(CTX, CreateOptions(spec=spec, hosting_system=vm))
    try:
        kinds = {r.kind for r in resources.items()}
        assert {"uvm-scsi", "uvm-plan9", "uvm-nic"} <= kinds, kinds
        init = Cmd(container, None, stdout=(out := io.BytesIO()), stderr=out)
        try:
            init.run()
        except Exception:
            print(out.getvalue().decode())
            raise
        output = out.getvalue().decode()
        assert "from the host" in output
        assert endpoint.mac_address.lower().replace("-", ":") in output.lower()
        assert f"{endpoint.ip_address}/{endpoint.prefix_length}" in output
        assert "lladdr" in output, output
    finally:
        container.close()
        release_resources(CTX, resources, vm, True)


# -- clones are their own --------------------------------------------------------


def test_two_clones_have_their_own_random_streams_ids_and_the_hosts_clock(
    template: Path, vms: Callable[..., UtilityVM], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's clock a day ahead for these two: the guest clock must follow it.
    day = 86400
    real = UtilityVM._clone_identity

    def ahead(vm: UtilityVM) -> dict[str, Any]:
        identity = real(vm)
        identity["time_ns"] += day * 10**9
        return identity

    monkeypatch.setattr(UtilityVM, "_clone_identity", ahead)
    first, second = started(vms(template="require")), started(vms(template="require"))
    assert first.restored and second.restored
    script = "head -c 32 /dev/urandom | od -An -tx1; cat /proc/sys/kernel/random/boot_id; date +%s"
    outputs = [command(vm, "sh", "-c", script).output().decode().split() for vm in (first, second)]
    streams = ["".join(out[:-2]) for out in outputs]
    boot_ids = [out[-2] for out in outputs]
    assert len(streams[0]) == 64 and streams[0] != streams[1]
    assert boot_ids[0] != boot_ids[1]
    assert boot_ids == [first.boot_id, second.boot_id]
    assert [first.gcs.vm_id, second.gcs.vm_id] == [first.id(), second.id()]
    for out in outputs:
        assert int(out[-1]) > time.time() + day / 2  # stepped to the host's (shifted) clock


def test_the_agent_sees_the_host_leave_and_come_back(
    template: Path, vms: Callable[..., UtilityVM]
) -> None:
    """A closed bridge parks the agent (it used to spin on EOF); a new host is served."""
    vm = started(vms(template="require"))
    vm.gcs.close()
    deadline = time.monotonic() + 30
    while "hcsoci-gcs: host disconnected" not in Path(vm.console_log).read_text():
        assert time.monotonic() < deadline, Path(vm.console_log).read_text()
        time.sleep(0.05)
    time.sleep(1.0)  # parked: the agent must not spin (nor log) meanwhile
    again = GuestConnection.connect(str(vm.state_dir / "gcs.sock"), CTX, 30.0, vm.id())
    try:
        assert again.boot_id == vm.boot_id
        console = Path(vm.console_log).read_text()
        assert console.count("hcsoci-gcs: host disconnected") == 1, console
        assert "hcsoci-gcs: host connected" in console
    finally:
        again.close()


# -- bad templates ---------------------------------------------------------------


def assert_refused(vm: UtilityVM, template: Path, message: str) -> None:
    with pytest.raises(UVMStartError, match=message) as info:
        vm.start(CTX)
    assert "\n" not in str(info.value).split("\n---")[0]  # one line before the logs' tails
    assert not template.exists()  # discarded: the next start rebuilds it
    assert_vm_gone(vm)


def test_a_truncated_template_is_refused(template: Path, vms: Callable[..., UtilityVM]) -> None:
    with open(state_file(template), "r+b") as file:
        file.truncate(os.path.getsize(file.name) // 2)
    assert_refused(vms(template="require"), template, "no usable template")


def test_a_template_truncated_under_a_matching_record_fails_midway(
    template: Path, vms: Callable[..., UtilityVM]
) -> None:
    """The record agrees with the cut file: QEMU itself stops halfway through the load."""
    state = state_file(template)
    with open(state, "r+b") as file:
        file.truncate(os.path.getsize(state) // 2)
    rewrite_meta(template, size=os.path.getsize(state), crc32=file_crc32(state))
    assert_refused(vms(template="require"), template, "QEMU refused the template")


def test_a_damaged_template_is_refused_before_the_guest_runs(
    template: Path, vms: Callable[..., UtilityVM]
) -> None:
    """Bytes flipped inside guest memory: QEMU would load it, the checksum does not."""
    state = state_file(template)
    data = state.read_bytes()
    inside_a_page = data.index(b"070701", len(data) // 4) + 64  # in the initramfs' cpio
    with open(state, "r+b") as file:
        file.seek(inside_a_page)
        file.write(bytes(b ^ 0xFF for b in data[inside_a_page : inside_a_page + 16]))
    assert_refused(vms(template="require"), template, "state file is damaged")


def test_garbage_is_refused_by_qemu(template: Path, vms: Callable[..., UtilityVM]) -> None:
    state = state_file(template)
    state.write_bytes(os.urandom(1 << 20))
    rewrite_meta(template, size=1 << 20, crc32=file_crc32(state))
    assert_refused(vms(template="require"), template, "QEMU refused the template")


@pytest.mark.parametrize(
    "field,value",
    [("assets_key", "0123456789abcdef"), ("qemu", "QEMU emulator version 6.0.0 0000")],
    ids=["other-assets", "other-qemu"],
)
def test_a_template_of_other_assets_or_another_qemu_is_refused(
    field: str, value: str, template: Path, vms: Callable[..., UtilityVM]
) -> None:
    rewrite_meta(template, **{field: value})
    assert_refused(vms(template="require"), template, "no usable template")


def test_an_agent_that_never_answers_after_a_restore_fails_it(
    template: Path, vms: Callable[..., UtilityVM], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated: a restored guest whose agent is silent cannot be made for real.
    real = GuestConnection.connect

    def silent(*args: Any, **kwargs: Any) -> GuestConnection:
        if kwargs.get("clone") is not None:
            raise GuestTimeoutError("negotiate", "no answer within 0.1 s")
        return real(*args, **kwargs)

    monkeypatch.setattr(GuestConnection, "connect", silent)
    assert_refused(vms(template="require"), template, "restore failed|no answer")


def test_a_damaged_template_falls_back_to_a_boot_and_is_rebuilt(
    template: Path, vms: Callable[..., UtilityVM], caplog: pytest.LogCaptureFixture
) -> None:
    state = state_file(template)
    with open(state, "r+b") as file:
        file.truncate(os.path.getsize(state) // 2)
    rewrite_meta(template, size=os.path.getsize(state), crc32=file_crc32(state))
    before = file_crc32(state)
    vm = started(vms(template="auto"))
    assert not vm.restored
    assert len(qemu_processes(vm.id())) == 1  # the failed restore's QEMU is gone
    assert command(vm, "echo", "ok").output() == b"ok\n"
    [warning] = [r for r in caplog.records if "discarded" in r.getMessage()]
    assert "restore failed" in warning.getMessage() and "\n" not in warning.getMessage()
    rebuilt = state_file(template)  # a good template again, from this boot
    assert file_crc32(rebuilt) != before
    clone = started(vms(template="require"))
    assert clone.restored and clone.boot_id != vm.boot_id


def test_a_stale_template_is_rebuilt(template: Path, vms: Callable[..., UtilityVM]) -> None:
    """Another QEMU recorded (as after an upgrade): never restored, replaced by this boot's."""
    rewrite_meta(template, qemu="QEMU emulator version 6.0.0 0000")
    vm = started(vms(template="auto"))
    assert not vm.restored
    meta = json.loads((template / "template.json").read_text())
    assert meta["identity"]["qemu"] != "QEMU emulator version 6.0.0 0000"
    clone = started(vms(template="require"))
    assert clone.restored


def test_template_files_are_roots_alone(template: Path) -> None:
    assert template.stat().st_mode & 0o777 == 0o700
    assert template.parent.stat().st_mode & 0o777 == 0o700
    for path in template.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_qemu_version_is_asked_once_per_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept in the asset cache by the binary's stat: a start spends no process on it."""
    monkeypatch.setenv("HCSOCI_ASSETS", str(tmp_path))
    cache = tmp_path / "qemu-version.json"
    qemu_version.cache_clear()
    try:
        real = qemu_version()
        assert real.startswith("QEMU emulator version"), real
        saved = json.loads(cache.read_text())
        assert cache.stat().st_mode & 0o077 == 0
        cache.write_text(json.dumps({**saved, "version": "QEMU emulator version 0.0 (kept)"}))
        qemu_version.cache_clear()
        assert qemu_version() == "QEMU emulator version 0.0 (kept)"  # no process asked
        cache.write_text(json.dumps({**saved, "binary": saved["binary"] + "0", "version": "x"}))
        qemu_version.cache_clear()
        assert qemu_version() == real  # another binary (an upgrade): asked again
        assert json.loads(cache.read_text()) == saved
    finally:
        qemu_version.cache_clear()
