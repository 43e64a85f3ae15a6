"""Networking of containers inside a utility VM (the seed's hosting-system network flow).

One VM for the module.  A VM container's endpoints become NICs (taps on their
network's bridge) in a guest namespace its runc container joins; releasing
the container's resources takes them out again.  Addresses are only on the
test's own hns networks (fresh subnets from ``free_subnet``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures_containers import Created, SpecFactory
from fixtures_hns import HnsLab
from fixtures_uvm import assert_vm_gone
from hcsoci import (
    CreateOptions,
    command,
    context,
    create_container,
    hns,
    oci,
    release_resources,
)
from hcsoci.errors import AlreadyExistsError, HcsociError, NotFoundError, StateError
from hcsoci.hns import netlink
from hcsoci.network import CreatedNamespace
from hcsoci.resources import load_resources
from hcsoci.store import open_store
from hcsoci.uvm import BootAssets, UtilityVM, UVMOptions, create, open_vm, remove_vm
from hcsoci.uvm.container import VMContainer
from hcsoci.uvm.network import VMNetEndpoint, VMNetNamespace, tap_prefix
from hcsoci.uvm.placement import GUEST_ROOT

CTX = context.background()
SERVER = (
    "mkdir -p /tmp/www && echo hello from $(hostname) > /tmp/www/index.html && "
    "exec httpd -f -p 8080 -h /tmp/www"
)


@pytest.fixture(scope="module")
def vm(uvm_assets: BootAssets, layer_cache: Path) -> Iterator[UtilityVM]:
    options = UVMOptions(id="tn-" + os.urandom(4).hex(), owner="pytest", scsi_luns=4)
    machine = create(context.background(), options)
    try:
        machine.start(context.background())
        yield machine
    finally:
        machine.close()
        assert_vm_gone(machine)


@pytest.fixture
def vm_spec(container_spec: SpecFactory) -> Callable[..., oci.Spec]:
    """``vm_spec(args, endpoints, **kwargs)``: a busybox spec listing ``endpoints``."""

    def make(args: list[str], endpoints: list[str], **kwargs: Any) -> oci.Spec:
        spec = container_spec(args, **kwargs)
        assert spec.windows is not None
        spec.windows.network = oci.WindowsNetwork(endpoint_list=endpoints)
        return spec

    return make


def host_taps(vm: UtilityVM) -> list[str]:
    return [name for name in netlink.list_links() if name.startswith(tap_prefix(vm.id()))]


def guest_netns(vm: UtilityVM) -> list[str]:
    listing = command(vm, "sh", "-c", "ls /run/netns 2>/dev/null || true").output()
    return listing.decode().split()


def guest_nics(vm: UtilityVM) -> int:
    """virtio-net devices the guest kernel sees."""
    script = "grep -l '^0x0001$' /sys/bus/virtio/devices/*/device 2>/dev/null | wc -l"
    return int(command(vm, "sh", "-c", script).output())


def assert_vm_network_clean(vm: UtilityVM, net_ns: str) -> None:
    """Nothing of the VM's networking is left, nor the host namespace ``net_ns`` (if any)."""
    assert vm.net_namespaces() == {}
    assert host_taps(vm) == []
    assert guest_netns(vm) == []
    assert guest_nics(vm) == 0
    assert [a.host_path for a in vm.scsi.attachments()] == []
    assert vm.plan9.shares() == []
    listing = command(vm, "sh", "-c", f"ls {GUEST_ROOT} 2>/dev/null || true").output()
    assert listing.strip() == b""  # no container left (the folder appears with the first)
    if net_ns:  # other test runs may make namespaces meanwhile: check ours only
        assert not os.path.exists(hns.namespace_path(net_ns))
        with pytest.raises(NotFoundError):
            hns.get_namespace(net_ns)


def wget(container: object, url: str) -> bytes:
    """``wget`` in ``container`` until the server answers (no ``-T``: busybox crashes on it)."""
    last: Exception | None = None
    for _ in range(60):
        ctx, cancel = context.with_timeout(CTX, 10.0)
        try:
            return command_output(ctx, container, "wget", "-q", "-O", "-", url)
        except HcsociError as err:
            last = err
            time.sleep(0.2)
        finally:
            cancel()
    raise AssertionError(f"wget {url}: {last}")


def command_output(ctx: context.Context, host: object, *argv: str) -> bytes:
    from hcsoci import command_context

    return command_context(ctx, host, *argv).output()  # type: ignore[arg-type]


def test_vm_container_and_host_container_share_a_network(
    vm: UtilityVM,
    lab: HnsLab,
    created: Created,
    container_spec: SpecFactory,
    vm_spec: Callable[..., oci.Spec],
) -> None:
    network = lab.network()
    vm_ep, host_ep = lab.endpoint(network), lab.endpoint(network)
    spec = vm_spec(["sh", "-c", SERVER], [vm_ep.id])
    spec.hostname = f"vm{lab.token}"
    container, resources = create_container(CTX, CreateOptions(spec=spec, hosting_system=vm))
    assert isinstance(container, VMContainer)
    try:
        kinds = [r.kind for r in resources.items()]
        assert kinds[1:4] == [CreatedNamespace.kind, VMNetNamespace.kind, VMNetEndpoint.kind]
        assert resources.net_ns in vm.net_namespaces()
        [nic] = vm.net_namespaces()[resources.net_ns]
        assert nic.endpoint_id == vm_ep.id
        assert Path(f"/sys/class/net/{nic.tap}/master").resolve().name == network.bridge
        assert container.spec.linux is not None
        namespaces = {n.type: n.path for n in container.spec.linux.namespaces or []}
        assert namespaces["network"] == f"/run/netns/{resources.net_ns}"
        container.start(CTX)
        # The guest container sees its NIC...
        address = command(container, "ip", "-o", "-4", "addr", "show", "eth0").output().decode()
        assert f"{vm_ep.ip_address}/{vm_ep.prefix_length}" in address
        # ...and a host container on the same network fetches from it.
        host_spec = container_spec(["sleep", "600"])
        assert host_spec.windows is not None
        host_spec.windows.network = oci.WindowsNetwork(endpoint_list=[host_ep.id])
        client, client_res = created(host_spec)
        client_ns = client_res.net_ns
        client.start(CTX)
        body = wget(client, f"http://{vm_ep.ip_address}:8080/")
        assert body == f"hello from vm{lab.token}\n".encode()
        props = container.properties(CTX)
        assert props.state == "running" and props.init_pid > 0
        assert props.init_pid in props.processes
        container.terminate(CTX)
        container.wait()
    finally:
        container.close()
        release_resources(CTX, resources, vm, True)
    assert resources.items() == []
    assert_vm_network_clean(vm, resources.net_ns)
    assert os.path.exists(hns.namespace_path(client_ns))  # the host container's, still there


def test_release_with_all_false_still_takes_the_nics_out(
    vm: UtilityVM, lab: HnsLab, vm_spec: Callable[..., oci.Spec]
) -> None:
    network = lab.network()
    endpoints = [lab.endpoint(network), lab.endpoint(network)]
    spec = vm_spec(["sleep", "600"], [e.id for e in endpoints])
    container, resources = create_container(CTX, CreateOptions(spec=spec, hosting_system=vm))
    container.close()
    assert [n.guest_name for n in vm.net_namespaces()[resources.net_ns]] == ["eth0", "eth1"]
    assert len(host_taps(vm)) == 2
    release_resources(CTX, resources, vm, False)
    assert vm.net_namespaces() == {} and host_taps(vm) == [] and guest_netns(vm) == []
    assert not os.path.exists(hns.namespace_path(resources.net_ns))
    assert not resources.find(VMNetEndpoint) and not resources.find(VMNetNamespace)
    release_resources(CTX, resources, vm, True)  # the shares the VM kept
    assert_vm_network_clean(vm, resources.net_ns)


def test_unknown_endpoint_is_refused_and_nothing_is_left(
    vm: UtilityVM, lab: HnsLab, vm_spec: Callable[..., oci.Spec]
) -> None:
    network = lab.network()
    good = lab.endpoint(network)
    spec = vm_spec(["true"], [good.id, "no-such-endpoint"])
    with pytest.raises(
        NotFoundError, match=r"endpoint_list\[1\]: endpoint 'no-such-endpoint'"
    ) as e:
        create_container(CTX, CreateOptions(spec=spec, hosting_system=vm))
    assert e.value.resources.net_ns == "" and e.value.resources.items() == []  # type: ignore[attr-defined]
    assert_vm_network_clean(vm, "")
    with pytest.raises(HcsociError, match="network_namespace"):
        create_container(
            CTX, CreateOptions(spec=spec, hosting_system=vm, network_namespace="whatever")
        )


def test_an_endpoint_gets_one_nic_per_vm(vm: UtilityVM, lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    vm.add_net_ns(CTX, f"one-{lab.token}")
    vm.add_net_ns(CTX, f"two-{lab.token}")
    try:
        vm.add_endpoints_to_ns(CTX, f"one-{lab.token}", [endpoint])
        with pytest.raises(AlreadyExistsError, match=f"endpoint {endpoint.id} already has a NIC"):
            vm.add_endpoints_to_ns(CTX, f"two-{lab.token}", [endpoint])
        assert vm.net_namespaces()[f"two-{lab.token}"] == []
        [nic] = vm.net_namespaces()[f"one-{lab.token}"]
        assert Path(f"/sys/class/net/{nic.tap}/master").resolve().name == network.bridge
    finally:
        vm.remove_net_ns(CTX, f"one-{lab.token}")
        vm.remove_net_ns(CTX, f"two-{lab.token}")
    assert_vm_network_clean(vm, "")


def test_a_removed_nic_frees_its_guest_name(vm: UtilityVM, lab: HnsLab) -> None:
    network = lab.network()
    first, second, third = (lab.endpoint(network) for _ in range(3))
    namespace = f"names-{lab.token}"
    vm.add_net_ns(CTX, namespace)
    try:
        vm.add_endpoints_to_ns(CTX, namespace, [first, second])
        vm.networks.remove_endpoint(CTX, namespace, first.id)
        vm.add_endpoints_to_ns(CTX, namespace, [third])
        names = {nic.endpoint_id: nic.guest_name for nic in vm.net_namespaces()[namespace]}
        assert names == {second.id: "eth1", third.id: "eth0"}
    finally:
        vm.remove_net_ns(CTX, namespace)
    assert_vm_network_clean(vm, "")


def test_failure_midway_releases_what_was_added(
    vm: UtilityVM, lab: HnsLab, vm_spec: Callable[..., oci.Spec]
) -> None:
    good_net, broken_net = lab.network(), lab.network()
    good, broken = lab.endpoint(good_net), lab.endpoint(broken_net)
    netlink.delete_link(broken_net.bridge)  # the second NIC cannot join its bridge
    spec = vm_spec(["true"], [good.id, broken.id])
    with pytest.raises(HcsociError, match=rf"endpoint_list\[1\]: endpoint {broken.id}") as raised:
        create_container(CTX, CreateOptions(spec=spec, hosting_system=vm))
    failed = raised.value.resources  # type: ignore[attr-defined]
    assert failed.items() == [] and failed.net_ns
    assert_vm_network_clean(vm, failed.net_ns)
    rows = open_store().query("SELECT kind FROM resources WHERE kind LIKE 'uvm-n%'")
    assert rows == []
    assert hns.get_endpoint_by_id(good.id).namespace == ""


# A controller that boots a VM, plugs a Plan9 share of argv[4], the SCSI disk
# argv[5] and a NIC for endpoint argv[1] (in guest namespace "plugged"), each
# recorded under owner argv[2], hands the VM over and exits.
PLUGGING_CONTROLLER = """
import json, sys
from hcsoci import context, hns
from hcsoci.resources import Resources
from hcsoci.uvm import UVMOptions, create
from hcsoci.uvm.network import VMNetEndpoint, VMNetNamespace
from hcsoci.uvm.plan9 import VMPlan9Share
from hcsoci.uvm.scsi import VMSCSIDisk
from hcsoci.uvm.vm import hand_over_vm

endpoint_id, owner, uvm_id, share_dir, disk = sys.argv[1:]
ctx = context.background()
vm = create(ctx, UVMOptions(id=uvm_id, owner="pytest"))
vm.start(ctx)
hand_over_vm(vm.id())
resources = Resources(owner)
record = VMPlan9Share(vm_id=uvm_id)
resources.add(record)
share = vm.add_plan9(ctx, share_dir, "/run/first-share", True, False, [])
record.name = share.name
resources.update(record)
resources.add(VMSCSIDisk(vm_id=uvm_id, host_path=disk))
attachment = vm.add_scsi(ctx, disk, "/run/first-disk", True)
resources.add(VMNetNamespace(vm_id=uvm_id, namespace_id="plugged"))
vm.add_net_ns(ctx, "plugged")
resources.add(VMNetEndpoint(vm_id=uvm_id, namespace_id="plugged", endpoint_id=endpoint_id))
vm.add_endpoints_to_ns(ctx, "plugged", [hns.get_endpoint_by_id(endpoint_id)])
tap = vm.net_namespaces()["plugged"][0].tap
print(json.dumps({"slot": share.slot, "target": attachment.target, "tap": tap}), flush=True)
vm.detach()
"""


def test_another_process_knows_the_devices_and_releases_them(
    lab: HnsLab, tmp_path: Path, ext4_image: Callable[[dict[str, bytes]], Path]
) -> None:
    """The device registry: a handle from open_vm sees what the first process
    plugged, adds its own beside them without collisions, and releases theirs."""
    network = lab.network()
    first, second = lab.endpoint(network), lab.endpoint(network)
    owner, uvm_id = f"plugger-{lab.token}", "th-" + os.urandom(4).hex()
    first_dir, own_dir = tmp_path / "first", tmp_path / "own"
    for directory in (first_dir, own_dir):
        directory.mkdir()
        (directory / "hello").write_text(directory.name)
    first_disk = ext4_image({"disk-hello": b"first disk"})
    own_disk = ext4_image({"disk-hello": b"own disk"})
    try:
        done = subprocess.run(
            [sys.executable, "-c", PLUGGING_CONTROLLER, first.id, owner, uvm_id,
             str(first_dir), str(first_disk)],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        plugged = json.loads(done.stdout)
        assert Path(f"/sys/class/net/{plugged['tap']}").exists()
        vm = open_vm(CTX, uvm_id)
        try:
            assert [s.slot for s in vm.plan9.shares()] == [plugged["slot"]]
            assert [a.target for a in vm.scsi.attachments()] == [plugged["target"]]
            assert [n.tap for n in vm.net_namespaces()["plugged"]] == [plugged["tap"]]
            assert command(vm, "cat", "/run/first-share/hello").output() == b"first"
            assert command(vm, "cat", "/run/first-disk/disk-hello").output() == b"first disk"

            own_share = vm.add_plan9(CTX, str(own_dir), "/run/own-share")
            own_attachment = vm.add_scsi(CTX, str(own_disk), "/run/own-disk", True)
            vm.add_net_ns(CTX, "own")
            vm.add_endpoints_to_ns(CTX, "own", [second])
            assert own_share.slot != plugged["slot"]
            assert own_attachment.target != plugged["target"]

            release_resources(CTX, load_resources(owner), vm, True)
            assert vm.plan9.shares() == [own_share]
            assert vm.scsi.attachments() == [own_attachment]
            assert not Path(f"/sys/class/net/{plugged['tap']}").exists()
            addresses = command(vm, "sh", "-c", "cat /sys/class/net/*/address").output()
            assert first.mac_address.lower().encode() not in addresses.lower()
            guest_namespaces = command(vm, "ls", "/run/netns").output().decode().split()
            assert "plugged" not in guest_namespaces and "own" in guest_namespaces
            mounts = command(vm, "cat", "/proc/mounts").output().decode()
            assert "/run/first-share" not in mounts and "/run/first-disk" not in mounts
            assert command(vm, "cat", "/run/own-share/hello").output() == b"own"
            assert command(vm, "cat", "/run/own-disk/disk-hello").output() == b"own disk"
            [own_nic] = vm.net_namespaces()["own"]
            assert Path(f"/sys/class/net/{own_nic.tap}/master").resolve().name == network.bridge
        finally:
            vm.close()
        assert not any(name.startswith(tap_prefix(uvm_id)) for name in os.listdir("/sys/class/net"))
        assert open_store().query("SELECT key FROM vm_devices WHERE vm_id = ?", (uvm_id,)) == []
    finally:
        with contextlib.suppress(NotFoundError):
            remove_vm(uvm_id)


# Boots VM argv[1], says so, and drives it until its stdin closes; then detaches.
HOLDING_CONTROLLER = """
import sys
from hcsoci import context
from hcsoci.uvm import UVMOptions, create
from hcsoci.uvm.vm import hand_over_vm

vm = create(context.background(), UVMOptions(id=sys.argv[1], owner="pytest"))
vm.start(context.background())
hand_over_vm(vm.id())
print("started", flush=True)
sys.stdin.read()
vm.detach()
print("detached", flush=True)
"""


def test_one_handle_drives_a_vm_and_a_second_is_refused_at_once() -> None:
    uvm_id = "tl-" + os.urandom(4).hex()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDING_CONTROLLER, uvm_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "started\n"
        # The lock, not a QMP greeting that never comes (30 s), says no.
        with pytest.raises(
            StateError, match=f"driven by another handle \\(process {holder.pid}\\)"
        ):
            open_vm(CTX, uvm_id)
        holder.stdin.close()
        assert holder.stdout.readline() == "detached\n"
        assert holder.wait(timeout=60) == 0
        vm = open_vm(CTX, uvm_id)  # the holder let go: this one drives it now
        try:
            assert command(vm, "echo", "driven").output() == b"driven\n"
        finally:
            vm.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        with contextlib.suppress(NotFoundError):
            remove_vm(uvm_id)
