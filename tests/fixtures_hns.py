"""Fixtures for the networking tests: unique names and subnets, guaranteed cleanup.

Other engineers' suites run at the same time on this machine, so every network
gets a random free subnet inside 10.201.0.0/16 and everything a test makes is
torn down afterwards, through the API and then, whatever survived, directly in
the kernel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from hcsoci import hns
from hcsoci.errors import HcsociError, InvalidArgumentError
from hcsoci.hns import firewall, netlink
from hcsoci.hns.state import store

BUSYBOX = "/bin/busybox"
HNS_RANGE = ipaddress.IPv4Network("10.201.0.0/16")


def free_subnet(prefix: int = 24) -> str:
    """A random subnet of 10.201.0.0/16 that overlaps nothing on this host right now."""
    taken = [net for _, net in netlink.host_ipv4_networks()]
    taken += [ipaddress.IPv4Network(n.subnet) for n in hns.list_networks()]
    candidates = list(HNS_RANGE.subnets(new_prefix=prefix))
    for _ in range(200):
        subnet = random.choice(candidates)
        if not any(subnet.overlaps(other) for other in taken):
            return str(subnet)
    raise RuntimeError("no free test subnet in 10.201.0.0/16")


class HnsLab:
    """Creates HNS objects for one test and removes all of them afterwards."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.networks: list[hns.Network] = []
        self.endpoints: list[str] = []
        self.namespaces: list[str] = []
        self.extra_netns: list[str] = []
        self.extra_links: list[str] = []

    def network(self, type: hns.NetworkType = "bridge", prefix: int = 24) -> hns.Network:
        for _ in range(5):  # a concurrent suite may grab the same subnet first
            try:
                network = hns.create_network(
                    f"{self.network_prefix}{len(self.networks)}", free_subnet(prefix), type
                )
            except InvalidArgumentError as err:
                if "overlaps" in str(err):
                    continue
                raise
            self.networks.append(network)
            return network
        raise RuntimeError("could not find a free subnet")

    def endpoint(self, network: hns.Network, name: str = "") -> hns.Endpoint:
        endpoint = hns.create_endpoint(network.id, name)
        self.endpoints.append(endpoint.id)
        return endpoint

    def namespace(self) -> str:
        namespace_id = hns.create_namespace()
        self.namespaces.append(namespace_id)
        return namespace_id

    def track_endpoint(self, endpoint_id: str) -> None:
        self.endpoints.append(endpoint_id)

    @property
    def network_prefix(self) -> str:
        """Every network this lab makes (or a child process of its test makes) is named so."""
        return f"t{self.token}-"

    def cleanup(self) -> None:
        networks = store().query(
            "SELECT * FROM hns_networks WHERE name LIKE ?", (self.network_prefix + "%",)
        )
        network_ids = [row["id"] for row in networks]
        endpoints = store().query(
            "SELECT * FROM hns_endpoints WHERE network_id IN (SELECT value FROM json_each(?))"
            " OR id IN (SELECT value FROM json_each(?))",
            (json.dumps(network_ids), json.dumps(self.endpoints)),
        )
        for namespace_id in reversed(self.namespaces):
            _quietly(hns.remove_namespace, namespace_id)
        for row in endpoints:
            _quietly(hns.delete_endpoint, row["id"])
        for network_id in network_ids:
            _quietly(hns.delete_network, network_id)
        # Whatever the API could not remove (a test broke it on purpose) goes directly.
        for row in endpoints:
            netlink.delete_link(row["host_interface"])
            netlink.delete_link(row["interface"])
            store().execute("DELETE FROM hns_endpoints WHERE id = ?", (row["id"],))
        for namespace_id in self.namespaces:
            netlink.remove_netns(hns.namespace_path(namespace_id))
            store().execute("DELETE FROM hns_namespaces WHERE id = ?", (namespace_id,))
        for row in networks:
            netlink.delete_link(row["bridge"])
            _quietly(firewall.remove_network_rules, row["bridge"])
            store().execute("DELETE FROM hns_networks WHERE id = ?", (row["id"],))
        for path in self.extra_netns:
            netlink.remove_netns(path)
        for name in self.extra_links:
            netlink.delete_link(name)


def _quietly(action: object, *args: str) -> None:
    with contextlib.suppress(HcsociError, OSError):
        action(*args)  # type: ignore[operator]


@pytest.fixture
def lab() -> Iterator[HnsLab]:
    """An :class:`HnsLab` whose objects are all removed when the test ends."""
    lab = HnsLab()
    try:
        yield lab
    finally:
        lab.cleanup()


def in_netns(path: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the network namespace at ``path`` (nsenter), capturing output."""
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def http_server(netns_path: str, address: str, directory: str, port: int = 8080) -> Iterator[str]:
    """busybox httpd serving ``directory`` on ``address:port`` in a namespace; yields its URL."""
    server = subprocess.Popen(
        [
            "nsenter",
            f"--net={netns_path}",
            BUSYBOX,
            "httpd",
            "-f",
            "-p",
            f"{address}:{port}",
            "-h",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://{address}:{port}"
    finally:
        server.kill()
        server.wait()


def fetch(netns_path: str, url: str, attempts: int = 50) -> str:
    """``busybox wget`` ``url`` from inside a namespace, retrying while the server starts."""
    # No `wget -T`: Debian's static busybox wget crashes with it; the subprocess times out.
    result = None
    for _ in range(attempts):
        result = in_netns(netns_path, BUSYBOX, "wget", "-q", "-O", "-", url, timeout=10)
        if result.returncode == 0:
            return result.stdout
        time.sleep(0.1)
    assert result is not None
    raise AssertionError(f"wget {url} from {netns_path} failed: {result}")


def cannot_fetch(netns_path: str, url: str) -> bool:
    """True when ``url`` is unreachable from inside a namespace (one short try)."""
    try:
        return (
            in_netns(netns_path, BUSYBOX, "wget", "-q", "-O", "-", url, timeout=2).returncode != 0
        )
    except subprocess.TimeoutExpired:
        return True


__all__ = [
    "BUSYBOX",
    "HnsLab",
    "cannot_fetch",
    "fetch",
    "free_subnet",
    "http_server",
    "in_netns",
    "lab",
]
