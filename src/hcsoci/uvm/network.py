"""Network namespaces in a utility VM, with NICs on HNS networks.

An HNS endpoint given to a VM becomes a tap device on the host, a port of the
endpoint's network bridge, hot-plugged into the guest as ``virtio-net-pci``
with the endpoint's MAC.  The agent finds the new interface by that MAC, moves
it into the guest network namespace named like the HNS namespace, renames it
``eth0``, ``eth1``..., and gives it the endpoint's address and default route.

Every name a NIC gets follows from the VM and endpoint ids alone: the tap is
``hct<vm tag><endpoint tag>``, the QEMU device ``nic-<endpoint id>`` and its
netdev ``net-<endpoint id>``.  So removing a VM from another process
(``hcsoci uvm rm``) finds and deletes its taps.  Namespaces and NICs are
recorded in the VM's device registry (:mod:`hcsoci.uvm.devices`), so a handle
from ``open_vm`` in another process knows and releases them all.

A VM container's networking is recorded as :class:`VMNetNamespace` (the guest
namespace) and :class:`VMNetEndpoint` (each NIC) resources.  They are not
``in_vm`` shares: like the seed's ``addedNetNSToVM``, release takes the NICs
out of the VM and deletes the guest namespace even with ``all=False``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hcsoci.context import Context
from hcsoci.errors import AlreadyExistsError, HcsociError, NotFoundError
from hcsoci.resources import Resource
from hcsoci.uvm.devices import DeviceRecords

if TYPE_CHECKING:
    from hcsoci import hns
    from hcsoci.uvm.vm import UtilityVM

__all__ = [
    "GuestNetworks",
    "VMNetEndpoint",
    "VMNetNamespace",
    "VMNic",
    "delete_vm_taps",
    "tap_prefix",
]

log = logging.getLogger(__name__)


def tap_prefix(uvm_id: str) -> str:
    """The name prefix of every tap device of VM ``uvm_id``."""
    return "hct" + _tag(uvm_id)


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _nic_names(uvm_id: str, endpoint_id: str) -> tuple[str, str, str]:
    """(tap, QEMU device id, QEMU netdev id) of endpoint ``endpoint_id``'s NIC in the VM."""
    # The tap name is 15 characters, the most a Linux interface name may have.
    return tap_prefix(uvm_id) + _tag(endpoint_id), f"nic-{endpoint_id}", f"net-{endpoint_id}"


@dataclass
class VMNic:
    """An endpoint's NIC in the VM."""

    endpoint_id: str
    tap: str
    device: str
    netdev: str
    namespace: str
    guest_name: str


@dataclass
class _Namespace:
    nics: list[VMNic] = field(default_factory=list)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise HcsociError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _delete_tap(tap: str) -> None:
    if os.path.exists(f"/sys/class/net/{tap}"):
        _ip("link", "delete", tap)


def delete_vm_taps(uvm_id: str) -> None:
    """Delete every tap device of VM ``uvm_id`` (tolerates none)."""
    prefix = tap_prefix(uvm_id)
    for name in os.listdir("/sys/class/net"):
        if name.startswith(prefix):
            _delete_tap(name)


def _free_guest_name(namespace: _Namespace) -> str:
    """The lowest ``ethN`` no NIC of the namespace has (a removed NIC frees its name)."""
    used = {nic.guest_name for nic in namespace.nics}
    return next(f"eth{n}" for n in itertools.count() if f"eth{n}" not in used)


class GuestNetworks:
    """The guest network namespaces of one VM and their NICs."""

    def __init__(self, vm: UtilityVM) -> None:
        self._vm = vm
        self._lock = threading.Lock()
        self._namespaces: dict[str, _Namespace] = {}
        self._namespace_records = DeviceRecords(vm.store, vm.id(), "netns")
        self._nic_records = DeviceRecords(vm.store, vm.id(), "nic")

    def load(self) -> None:
        """Take over the namespaces and NICs recorded by the VM's other handles."""
        namespaces = {ns_id: _Namespace() for ns_id in self._namespace_records.load()}
        nics = [VMNic(**data) for data in self._nic_records.load().values()]
        for nic in sorted(nics, key=lambda n: int(n.guest_name.removeprefix("eth"))):
            namespaces.setdefault(nic.namespace, _Namespace()).nics.append(nic)
        with self._lock:
            self._namespaces = namespaces

    def namespaces(self) -> dict[str, list[VMNic]]:
        """Namespace id -> its NICs."""
        with self._lock:
            return {ns: list(state.nics) for ns, state in self._namespaces.items()}

    def add_namespace(self, ctx: Context, ns_id: str) -> None:
        """Create the guest namespace ``ns_id`` (AlreadyExistsError if it exists)."""
        if not ns_id or "/" in ns_id:
            raise HcsociError(f"add_net_ns: invalid namespace id {ns_id!r}")
        with self._lock:
            if ns_id in self._namespaces:
                raise AlreadyExistsError(f"add_net_ns: VM {self._vm.id()} has {ns_id!r}")
            self._namespaces[ns_id] = _Namespace()
        try:
            self._namespace_records.save(ns_id, {})
            self._vm.gcs_request(ctx, "create_netns", {"name": ns_id})
        except BaseException:
            with self._lock:
                self._namespaces.pop(ns_id, None)
            self._namespace_records.delete(ns_id)
            raise

    def add_endpoints(self, ctx: Context, ns_id: str, endpoints: list[hns.Endpoint]) -> None:
        """Plug a NIC for each endpoint and configure it inside ``ns_id``."""
        with self._lock:
            namespace = self._namespaces.get(ns_id)
        if namespace is None:
            raise NotFoundError(f"add_endpoints_to_ns: VM {self._vm.id()} has no {ns_id!r}")
        for endpoint in endpoints:
            self._add(ctx, ns_id, namespace, endpoint)

    def _add(self, ctx: Context, ns_id: str, namespace: _Namespace, ep: hns.Endpoint) -> None:
        # Imported here: hns brings pyroute2 (a tenth of a second), and most VMs have no NIC.
        from hcsoci import hns

        network = hns.get_network_by_id(ep.virtual_network)
        tap, device, netdev = _nic_names(self._vm.id(), ep.id)
        with self._lock:
            if self._find(ep.id) is not None or os.path.exists(f"/sys/class/net/{tap}"):
                raise AlreadyExistsError(
                    f"add_endpoints_to_ns: endpoint {ep.id} already has a NIC in VM "
                    f"{self._vm.id()} (tap {tap})"
                )
            nic = VMNic(
                endpoint_id=ep.id,
                tap=tap,
                device=device,
                netdev=netdev,
                namespace=ns_id,
                guest_name=_free_guest_name(namespace),
            )
            namespace.nics.append(nic)  # recorded before anything is allocated
        try:
            self._nic_records.save(ep.id, dataclasses.asdict(nic))
            _ip("tuntap", "add", "dev", nic.tap, "mode", "tap")
            _ip("link", "set", nic.tap, "master", network.bridge, "up")
            self._vm.qmp(
                "netdev_add",
                {
                    "type": "tap",
                    "id": nic.netdev,
                    "ifname": nic.tap,
                    "script": "no",
                    "downscript": "no",
                },
            )
            self._vm.device_add(
                {
                    "driver": "virtio-net-pci",
                    "id": nic.device,
                    "netdev": nic.netdev,
                    "mac": ep.mac_address,
                }
            )
            self._vm.gcs_request(
                ctx,
                "add_nic",
                {
                    "namespace": ns_id,
                    "mac": ep.mac_address,
                    "name": nic.guest_name,
                    "address": f"{ep.ip_address}/{ep.prefix_length}",
                    # the first NIC's gateway is the default route, as in an hns namespace
                    "gateway": ep.gateway_address if nic.guest_name == "eth0" else "",
                },
            )
        except BaseException:
            try:
                self._remove_nic(nic)
            finally:
                with self._lock:
                    namespace.nics.remove(nic)
                self._nic_records.delete(ep.id)
            raise

    def find_endpoint(self, endpoint_id: str) -> VMNic | None:
        """The NIC of ``endpoint_id`` in any namespace of this VM, if any."""
        with self._lock:
            return self._find(endpoint_id)

    def _find(self, endpoint_id: str) -> VMNic | None:
        for state in self._namespaces.values():
            for nic in state.nics:
                if nic.endpoint_id == endpoint_id:
                    return nic
        return None

    def remove_endpoint(self, ctx: Context, ns_id: str, endpoint_id: str) -> None:
        """Unplug the NIC of ``endpoint_id`` from namespace ``ns_id`` and delete its tap."""
        with self._lock:
            namespace = self._namespaces.get(ns_id)
            nics = [n for n in namespace.nics if n.endpoint_id == endpoint_id] if namespace else []
        if namespace is None or not nics:
            raise NotFoundError(
                f"remove_endpoint: VM {self._vm.id()} has no NIC of endpoint {endpoint_id!r} "
                f"in {ns_id!r}"
            )
        for nic in nics:
            self._remove_nic(nic)
            with self._lock:
                namespace.nics.remove(nic)
            self._nic_records.delete(nic.endpoint_id)

    def _remove_nic(self, nic: VMNic) -> None:
        self._vm.device_del(nic.device)
        if self._vm.is_running():
            try:
                self._vm.qmp("netdev_del", {"id": nic.netdev})
            except HcsociError as err:
                if "not found" not in str(err):
                    raise
        _delete_tap(nic.tap)

    def remove_namespace(self, ctx: Context, ns_id: str) -> None:
        """Unplug the namespace's NICs, delete their taps and the guest namespace."""
        with self._lock:
            namespace = self._namespaces.get(ns_id)
        if namespace is None:
            raise NotFoundError(f"remove_net_ns: VM {self._vm.id()} has no {ns_id!r}")
        for nic in list(namespace.nics):
            self._remove_nic(nic)
            with self._lock:
                namespace.nics.remove(nic)
            self._nic_records.delete(nic.endpoint_id)
        if self._vm.is_running():
            self._vm.gcs_request(ctx, "delete_netns", {"name": ns_id})
        with self._lock:
            self._namespaces.pop(ns_id, None)
        self._namespace_records.delete(ns_id)

    def clear(self) -> None:
        """Forget everything and delete the taps (the VM is gone)."""
        with self._lock:
            self._namespaces.clear()
        self._namespace_records.clear()
        self._nic_records.clear()
        delete_vm_taps(self._vm.id())


# --- resources --------------------------------------------------------------


def _live(vm: UtilityVM | None, vm_id: str) -> UtilityVM | None:
    if vm is None or vm.id() != vm_id or not vm.is_running():
        return None  # the VM is gone, and its NICs and taps with it
    return vm


class VMNetNamespace(Resource, kw_only=True):
    """A network namespace added to a VM (``AddNetNS``): its NICs unplugged, then deleted."""

    kind = "uvm-net-namespace"
    vm_id: str
    namespace_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = _live(vm, self.vm_id)
        if live is None:
            return
        if self.namespace_id in live.net_namespaces():  # any handle's: the registry
            live.remove_net_ns(ctx, self.namespace_id)


class VMNetEndpoint(Resource, kw_only=True):
    """An endpoint's NIC in a VM's namespace (``AddEndpointsToNS``): unplugged, tap deleted."""

    kind = "uvm-nic"
    vm_id: str
    namespace_id: str
    endpoint_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        live = _live(vm, self.vm_id)
        if live is None:
            return
        nic = live.networks.find_endpoint(self.endpoint_id)
        if nic is not None and nic.namespace == self.namespace_id:
            live.networks.remove_endpoint(ctx, self.namespace_id, self.endpoint_id)
