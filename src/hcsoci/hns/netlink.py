"""Kernel plumbing for HNS objects: bridges, veth pairs and named network namespaces.

Everything goes through rtnetlink (pyroute2) or plain syscalls; no ``ip`` process
is spawned.  A netlink socket *inside* a namespace is opened by switching only the
calling thread into it (``setns`` is per-thread) for the ``socket()`` call, so no
helper process is forked.  Named namespaces are created the way ``ip netns add``
does: a short-lived thread unshares its network namespace and bind-mounts it on
``/var/run/netns/NAME``, so it outlives its creator.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hcsoci.errors import HcsociError, NotFoundError
from hcsoci.netns_calls import enter_netns, libc_error, open_netns, unshare_netns

__all__ = [
    "LOOPBACK_INDEX",
    "NETNS_RUN_DIR",
    "PlumbingError",
    "attach_interface",
    "create_bridge",
    "create_netns",
    "create_veth",
    "delete_link",
    "detach_interface",
    "host_ipv4_networks",
    "host_route",
    "is_netns",
    "link_exists",
    "links_exist",
    "list_links",
    "netns_route",
    "remove_netns",
]

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/var/run/netns"

LOOPBACK_INDEX = 1
"""``lo``'s interface index, the same in every network namespace (``LOOPBACK_IFINDEX``)."""

_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class PlumbingError(HcsociError):
    """A netlink or namespace operation failed; the message names the object and the step."""


# ---------------------------------------------------------------------------
# netlink sockets


@contextmanager
def host_route() -> Iterator[Any]:
    """An rtnetlink connection (``IPRoute``) in the calling thread's network namespace."""
    with IPRoute() as ipr:
        yield ipr


@contextmanager
def netns_route(path: str) -> Iterator[Any]:
    """An rtnetlink connection inside the namespace bound at ``path``.

    Raises :class:`NotFoundError` when ``path`` is not a network namespace.
    """
    sock = _socket_in_netns(path)
    with IPRoute(fileno=sock.detach()) as ipr:
        yield ipr


def _socket_in_netns(path: str) -> socket.socket:
    target = open_netns(path)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(target)
        try:
            return socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0
            )  # NETLINK_ROUTE
        finally:
            # Failing to return would leave this thread in the wrong namespace: fatal.
            try:
                enter_netns(own)
            except OSError:
                os.abort()
    finally:
        os.close(own)
        os.close(target)


def is_netns(path: str) -> bool:
    """True when ``path`` is a live network namespace file (a mounted nsfs)."""
    try:
        os.close(open_netns(path))
    except NotFoundError:
        return False
    return True


# ---------------------------------------------------------------------------
# named namespaces


def create_netns(path: str) -> None:
    """Create a network namespace and bind it at ``path`` (like ``ip netns add``).

    ``lo`` is brought up.  Fails with :class:`FileExistsError` if ``path`` exists.
    """
    _prepare_run_dir(os.path.dirname(path))
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    failure: list[BaseException] = []

    def unshare_and_bind() -> None:
        # This thread's network namespace becomes the new one; it dies with the
        # thread, so the rest of the process never sees it.
        try:
            unshare_netns(f"unshare a network namespace for {path}")
            source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if _libc.mount(source, path.encode(), b"none", _MS_BIND, None) != 0:
                raise libc_error(f"bind the new network namespace on {path}")
            with IPRoute() as ipr:
                ipr.link("set", index=LOOPBACK_INDEX, state="up")
        except BaseException as err:
            failure.append(err)

    worker = threading.Thread(target=unshare_and_bind, name="hcsoci-netns-create")
    worker.start()
    worker.join()
    if failure:
        remove_netns(path)
        raise PlumbingError(f"create network namespace {path}: {failure[0]}") from failure[0]


def _prepare_run_dir(run_dir: str) -> None:
    """Make ``run_dir`` a shared mount, as iproute2 does, so namespace mounts propagate."""
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    encoded = run_dir.encode()
    if _libc.mount(b"", encoded, b"none", _MS_SHARED | _MS_REC, None) == 0:
        return
    if _libc.mount(encoded, encoded, b"none", _MS_BIND | _MS_REC, None) != 0:
        raise libc_error(f"bind {run_dir} on itself")
    if _libc.mount(b"", encoded, b"none", _MS_SHARED | _MS_REC, None) != 0:
        raise libc_error(f"make {run_dir} a shared mount")


def remove_netns(path: str) -> None:
    """Unmount and delete the namespace file at ``path``; a missing one is fine.

    The namespace itself goes away with its last user, taking its interfaces along.
    """
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (
        errno.EINVAL,  # not a mount point: a half-created or already unmounted file
        errno.ENOENT,
    ):
        raise libc_error(f"unmount network namespace {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---------------------------------------------------------------------------
# links


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_exists(name: str) -> bool:
    """True when the interface ``name`` exists in this namespace."""
    with host_route() as ipr:
        return _index(ipr, name) is not None


def links_exist(*names: str) -> bool:
    """True when every one of the interfaces ``names`` exists in this namespace."""
    with host_route() as ipr:
        return all(_index(ipr, name) is not None for name in names)


def list_links() -> dict[str, str]:
    """Every interface of this namespace: name -> alias (``""`` without one)."""
    with host_route() as ipr:
        return {str(link.get("ifname")): str(link.get("ifalias") or "") for link in ipr.get_links()}


def host_ipv4_networks() -> list[tuple[str, ipaddress.IPv4Network]]:
    """``(interface, subnet)`` of every IPv4 address of this namespace."""
    with host_route() as ipr:
        names = {link["index"]: str(link.get("ifname")) for link in ipr.get_links()}
        return [
            (
                names.get(addr["index"], str(addr["index"])),
                ipaddress.IPv4Network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False),
            )
            for addr in ipr.get_addr(family=socket.AF_INET)
        ]


def _fail(step: str, err: NetlinkError) -> PlumbingError:
    return PlumbingError(f"{step}: {err.args[1] if len(err.args) > 1 else err}")


def create_bridge(name: str, mac: str, gateway: str, prefix_length: int, alias: str) -> None:
    """Create bridge ``name`` holding ``gateway/prefix_length``, up.  Undone on failure."""
    with host_route() as ipr:
        try:
            ipr.link("add", ifname=name, kind="bridge", address=mac, ifalias=alias)
        except NetlinkError as err:
            raise _fail(f"create bridge {name}", err) from err
        try:
            index = _index(ipr, name)
            ipr.addr("add", index=index, address=gateway, prefixlen=prefix_length)
            ipr.link("set", index=index, state="up")
        except NetlinkError as err:
            _delete_quietly(ipr, name)
            raise _fail(f"configure bridge {name} with {gateway}/{prefix_length}", err) from err


def create_veth(host: str, peer: str, peer_mac: str, bridge: str, alias: str) -> None:
    """Create the veth pair ``host``/``peer``; ``host`` joins ``bridge`` and goes up.

    ``peer`` gets ``peer_mac`` and stays down until it is attached to a namespace.
    """
    with host_route() as ipr:
        _create_veth(ipr, host, peer, peer_mac, bridge, alias)


def _create_veth(
    ipr: Any, host: str, peer: str, peer_mac: str, bridge: str, alias: str, netns_fd: int = -1
) -> None:
    """One RTM_NEWLINK: the pair, ``host`` enslaved to ``bridge`` and up, ``peer`` down.

    With ``netns_fd`` the peer is born inside that namespace (``IFLA_NET_NS_FD`` in
    the peer's attributes): no device ever moves, so no RCU barrier is waited for.
    """
    master = _index(ipr, bridge)
    if master is None:
        raise NotFoundError(f"bridge {bridge} does not exist")
    peer_attrs: dict[str, object] = {"ifname": peer, "address": peer_mac, "ifalias": alias}
    if netns_fd >= 0:
        peer_attrs["net_ns_fd"] = netns_fd
    try:
        ipr.link(
            "add",
            ifname=host,
            kind="veth",
            ifalias=alias,
            master=master,
            state="up",
            peer=peer_attrs,
        )
    except NetlinkError as err:
        raise _fail(f"create veth pair {host}/{peer} on bridge {bridge}", err) from err


def delete_link(name: str) -> bool:
    """Delete interface ``name`` (a veth takes its peer along).  False if it was gone."""
    with host_route() as ipr:
        return _delete_quietly(ipr, name)


def _delete_quietly(ipr: Any, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as err:
        if err.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise _fail(f"delete interface {name}", err) from err
    return True


# ---------------------------------------------------------------------------
# putting an endpoint's interface into a namespace and bringing it back out


def attach_interface(
    netns_path: str,
    interface: str,
    namespace_interface: str,
    address: str,
    prefix_length: int,
    gateway: str,
    *,
    host_interface: str,
    mac: str,
    bridge: str,
    alias: str,
) -> None:
    """Put an endpoint's interface into the namespace as ``namespace_interface``, configured.

    If ``interface`` exists (the endpoint was attached before and brought back
    out) it is moved in.  Otherwise the veth pair is born now, in one request:
    ``host_interface`` on ``bridge`` in this namespace, its peer created directly
    inside the target namespace as ``namespace_interface`` with ``mac``.  The
    interface gets ``address/prefix_length``, goes up with ``lo``, and becomes
    the default route via ``gateway`` unless the namespace has one already.  On
    failure the endpoint is left as it was: a moved interface is brought back
    out under its own name, a pair born here is deleted.
    """
    netns_fd = open_netns(netns_path)
    try:
        with host_route() as ipr:
            index = _index(ipr, interface)
            born = index is None
            if born:
                try:
                    _create_veth(
                        ipr, host_interface, namespace_interface, mac, bridge, alias, netns_fd
                    )
                except PlumbingError:
                    # A host side without its peer here is a leftover (its peer
                    # went with a namespace the kernel has not finished destroying).
                    if not _delete_quietly(ipr, host_interface):
                        raise
                    _create_veth(
                        ipr, host_interface, namespace_interface, mac, bridge, alias, netns_fd
                    )
            else:
                try:
                    ipr.link("set", index=index, net_ns_fd=netns_fd, ifname=namespace_interface)
                except NetlinkError as err:
                    raise _fail(
                        f"move {interface} into {netns_path} as {namespace_interface}", err
                    ) from err
    finally:
        os.close(netns_fd)
    try:
        with netns_route(netns_path) as ns:
            index = _index(ns, namespace_interface)
            if index is None:
                raise PlumbingError(f"{namespace_interface} did not appear in {netns_path}")
            ns.addr("add", index=index, address=address, prefixlen=prefix_length)
            ns.link("set", index=index, state="up")
            ns.link("set", index=LOOPBACK_INDEX, state="up")
            if not ns.get_default_routes(family=socket.AF_INET):
                ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
    except (NetlinkError, HcsociError) as err:
        try:
            if born:
                delete_link(host_interface)
            else:
                detach_interface(netns_path, namespace_interface, interface)
        except HcsociError as undo:
            log.error("could not undo adding %s to %s: %s", namespace_interface, netns_path, undo)
        if isinstance(err, NetlinkError):
            raise _fail(
                f"configure {namespace_interface} in {netns_path} with "
                f"{address}/{prefix_length} via {gateway}",
                err,
            ) from err
        raise


def detach_interface(
    netns_path: str,
    namespace_interface: str,
    interface: str,
    remaining: Sequence[tuple[str, str]] = (),
) -> bool:
    """Bring ``namespace_interface`` out of the namespace, renamed back to ``interface``.

    The move itself leaves it down and without addresses (the kernel closes a
    device and drops its IP configuration when it changes namespace), so no
    separate flush or down is sent; its MAC is untouched.  If the namespace is
    left without a default route, one is added through the first of
    ``remaining`` (``(namespace_interface, gateway)`` of the endpoints still
    there).  False when the interface was not in the namespace.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netns_route(netns_path) as ns:
            index = _index(ns, namespace_interface)
            if index is None:
                return False
            try:
                ns.link("set", index=index, net_ns_fd=own, ifname=interface)
            except NetlinkError as err:
                raise _fail(
                    f"move {namespace_interface} out of {netns_path} as {interface}", err
                ) from err
            if remaining and not ns.get_default_routes(family=socket.AF_INET):
                other, gateway = remaining[0]
                try:
                    ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=_index(ns, other))
                except NetlinkError as err:
                    log.warning("no default route via %s left in %s: %s", other, netns_path, err)
            return True
    finally:
        os.close(own)
