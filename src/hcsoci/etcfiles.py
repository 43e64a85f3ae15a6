"""A container's ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``, as docker makes them.

The three files are written into a directory of the container's own (its
bundle), from the spec's hostname and the container's endpoints, and bound
read-only over the image's files, so that name resolution inside the container
matches its network and never the host's:

* ``hostname``: ``spec.hostname``, else the first 12 characters of the id;
* ``hosts``: the loopback names, and the hostname on each endpoint's address;
* ``resolv.conf``: the endpoints' DNS servers (the HNS endpoint's
  ``dns_server_list``).  A container with endpoints but no DNS server of its
  own gets the host's name servers other than loopback ones (which would be
  the container's own loopback); a container without a network gets none.

A spec that mounts any of these destinations itself (as docker and podman do)
keeps its own for that file.  A container in a utility VM gets the same files,
written by the guest into its own directory there (see hcsoci.uvm.placement).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from hcsoci import oci
from hcsoci.paths import make_private_dir, write_private_file

__all__ = [
    "ETC_FILES",
    "HOST_RESOLV_CONF",
    "Addressed",
    "add_etc_files",
    "etc_file_contents",
    "etc_file_mount",
    "wanted_etc_files",
]

ETC_FILES = ("hostname", "hosts", "resolv.conf")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")

_LOOPBACK_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


class Addressed(Protocol):
    """What the files need of an endpoint (:class:`hcsoci.hns.Endpoint` has it)."""

    ip_address: str
    dns_server_list: list[str]


def etc_file_contents(
    hostname: str, endpoints: Sequence[Addressed], host_resolv_conf: Path = HOST_RESOLV_CONF
) -> dict[str, bytes]:
    """The three files' contents, by name."""
    hosts = _LOOPBACK_HOSTS + "".join(
        f"{endpoint.ip_address}\t{hostname}\n" for endpoint in endpoints if endpoint.ip_address
    )
    servers = list(dict.fromkeys(s for e in endpoints for s in e.dns_server_list if s))
    resolv: list[str] = []
    if servers:
        resolv = [f"nameserver {server}" for server in servers]
    elif endpoints:
        resolv = _host_resolvers(host_resolv_conf)
    if not resolv:
        resolv = ["# no DNS servers: this container has no network, or its networks name none"]
    return {
        "hostname": f"{hostname}\n".encode(),
        "hosts": hosts.encode(),
        "resolv.conf": ("\n".join(resolv) + "\n").encode(),
    }


def _host_resolvers(path: Path) -> list[str]:
    """The host's resolv.conf lines that make sense in another network namespace."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    kept = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver":
            try:
                if len(words) < 2 or ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
        elif words[0] not in ("search", "domain", "options"):
            continue
        kept.append(" ".join(words))
    return kept if any(line.startswith("nameserver ") for line in kept) else []


def wanted_etc_files(spec: oci.Spec, given_root: str | None = None) -> list[str]:
    """The names of :data:`ETC_FILES` whose ``/etc`` path the spec does not mount itself.

    ``given_root`` is the caller's own root directory (``spec.root.path`` without
    layers), used as it is: then only the files it already has are bound, since
    the runtime would otherwise create the missing mount points in the caller's
    directory (or fail on a read-only one).  A layered root has a scratch to
    take them.
    """
    taken = {mount.destination.rstrip("/") for mount in spec.mounts or []}
    wanted = [name for name in ETC_FILES if f"/etc/{name}" not in taken]
    if given_root is None:
        return wanted
    return [name for name in wanted if os.path.lexists(os.path.join(given_root, "etc", name))]


def etc_file_mount(name: str, source: str) -> oci.Mount:
    """The read-only bind of ``source`` over ``/etc/<name>``."""
    return oci.Mount(
        destination=f"/etc/{name}",
        type="bind",
        source=source,
        options=["rbind", "ro", "nosuid", "nodev", "noexec"],
    )


def add_etc_files(
    spec: oci.Spec,
    directory: Path,
    container_id: str,
    endpoints: Sequence[Addressed],
    given_root: str | None = None,
) -> list[oci.Mount]:
    """Write the files into ``directory`` (created, private) and bind them into ``spec``.

    Returns the mounts added to ``spec.mounts`` (none for a destination the spec
    already mounts; see :func:`wanted_etc_files` for ``given_root``).
    """
    wanted = wanted_etc_files(spec, given_root)
    if not wanted:
        return []
    hostname = spec.hostname or container_id[:12]
    contents = etc_file_contents(hostname, endpoints)
    make_private_dir(directory)
    added = []
    for name in wanted:
        source = directory / name
        write_private_file(source, contents[name], mode=0o644)  # the container's user reads it
        added.append(etc_file_mount(name, str(source)))
    spec.mounts = [*(spec.mounts or []), *added]
    return added
