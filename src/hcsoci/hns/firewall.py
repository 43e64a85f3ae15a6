"""nftables rules of a network: isolation from other networks, and NAT for ``nat`` ones.

Each network gets its own table, ``ip hcsoci_<bridge>``, so its rules are added
and removed in one atomic ``nft -f -`` transaction and nothing else on the host
is touched.  Published ports (:func:`add_port_forward`) are elements of maps in
the same table, DNAT-ed in its own ``prerouting`` and ``output`` chains.  The
table always holds a forward-hook rule dropping traffic routed
from the network's bridge to any other hcsoci bridge (networks are isolated
from each other, as HNS networks are); a ``nat`` network's table also
masquerades its subnet's traffic leaving the host.  Links and addresses never
go through here: they are netlink's (:mod:`hcsoci.hns.netlink`).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

from hcsoci.errors import HcsociError

__all__ = [
    "BRIDGE_PREFIX",
    "FirewallError",
    "add_network_rules",
    "add_port_forward",
    "enable_forwarding",
    "network_tables",
    "remove_network_rules",
    "remove_port_forward",
    "table_name",
]

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "hcb"
"""Every network bridge's name starts with this: what isolation rules match on."""

_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


class FirewallError(HcsociError):
    """nftables refused a change."""


def table_name(bridge: str) -> str:
    """The nftables table (family ``ip``) holding the rules of ``bridge``'s network."""
    return f"hcsoci_{bridge}"


def _nft(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    return subprocess.run([nft, *args], input=script, capture_output=True, text=True, check=False)


def add_network_rules(bridge: str, subnet: str, masquerade: bool) -> None:
    """Isolate ``bridge``'s network from the other networks; masquerade ``subnet`` if asked."""
    table = table_name(bridge)
    lines = [
        f"add table ip {table}",
        f"flush table ip {table}",
        f"add chain ip {table} forward "
        "{ type filter hook forward priority filter; policy accept; }",
        f'add rule ip {table} forward iifname "{bridge}" oifname != "{bridge}" '
        f'oifname "{BRIDGE_PREFIX}*" drop',
    ]
    if masquerade:
        lines += [
            f"add chain ip {table} postrouting "
            "{ type nat hook postrouting priority srcnat; policy accept; }",
            f'add rule ip {table} postrouting ip saddr {subnet} oifname != "{bridge}" masquerade',
        ]
    result = _nft("\n".join(lines) + "\n", "-f", "-")
    if result.returncode != 0:
        raise FirewallError(f"nft: rules for network bridge {bridge}: {result.stderr.strip()}")


def remove_network_rules(bridge: str) -> bool:
    """Delete ``bridge``'s table.  False when it was not there."""
    table = table_name(bridge)
    result = _nft("", "delete", "table", "ip", table)
    if result.returncode == 0:
        return True
    if "No such file or directory" in result.stderr:
        return False
    raise FirewallError(f"nft: delete table ip {table}: {result.stderr.strip()}")


def network_tables() -> list[str]:
    """Names of the hcsoci network tables present in the kernel."""
    result = _nft("", "-j", "list", "tables", "ip")
    if result.returncode != 0:
        raise FirewallError(f"nft: list tables: {result.stderr.strip()}")
    entries = json.loads(result.stdout or "{}").get("nftables", [])
    return [
        entry["table"]["name"]
        for entry in entries
        if "table" in entry and entry["table"]["name"].startswith("hcsoci_")
    ]


def enable_forwarding() -> None:
    """Turn on IPv4 forwarding, without which masqueraded traffic never leaves the bridge."""
    if _IP_FORWARD.read_text().strip() != "1":
        log.info("enabling net.ipv4.ip_forward for NAT networks")
        _IP_FORWARD.write_text("1\n")


def _port_chains(table: str, bridge: str, protocol: str) -> list[str]:
    """The maps and chains of published ports in ``table`` (made once, idempotent)."""
    service = "ipv4_addr . inet_service"
    lines = [
        f"add map ip {table} {protocol}_any {{ type inet_service : {service}; }}",
        f"add map ip {table} {protocol}_addr {{ type {service} : {service}; }}",
    ]
    hooks = (("ports_pre", "prerouting", "dstnat"), ("ports_out", "output", "-100"))
    for chain, hook, priority in hooks:
        base = f"type nat hook {hook} priority {priority}; policy accept;"
        lines += [f"add chain ip {table} {chain} {{ {base} }}", f"flush chain ip {table} {chain}"]
        for proto in ("tcp", "udp"):
            if proto != protocol and not _has_map(table, f"{proto}_any"):
                continue
            rule = f"add rule ip {table} {chain}"
            lines += [
                f"{rule} fib daddr type local dnat ip to {proto} dport map @{proto}_any",
                f"{rule} dnat ip to ip daddr . {proto} dport map @{proto}_addr",
            ]
    # Traffic from this machine's loopback (127.0.0.1:PORT) leaves for the bridge with a
    # loopback source: masquerade it, or the container's reply would go to its own lo.
    post = "type nat hook postrouting priority srcnat; policy accept;"
    lines += [
        f"add chain ip {table} ports_post {{ {post} }}",
        f"flush chain ip {table} ports_post",
        f'add rule ip {table} ports_post ip saddr 127.0.0.0/8 oifname "{bridge}" masquerade',
    ]
    return lines


def _has_map(table: str, name: str) -> bool:
    return _nft("", "list", "map", "ip", table, name).returncode == 0


def add_port_forward(
    bridge: str,
    protocol: str,
    host_ip: str,
    host_port: int,
    address: str,
    port: int,
) -> None:
    """Forward ``host_ip:host_port`` (any local address when ``host_ip`` is '') to
    ``address:port`` on ``bridge``'s network.  A port forwarded already is refused."""
    table = table_name(bridge)
    if host_ip:
        target = f"{host_ip} . {host_port} : {address} . {port}"
        element = f"add element ip {table} {protocol}_addr {{ {target} }}"
        key = f"{protocol}_addr {{ {host_ip} . {host_port} }}"
    else:
        element = f"add element ip {table} {protocol}_any {{ {host_port} : {address} . {port} }}"
        key = f"{protocol}_any {{ {host_port} }}"
    if _nft("", "get", "element", "ip", table, *key.split(" ", 1)).returncode == 0:
        raise FirewallError(f"host port {host_port}/{protocol} is already published")
    result = _nft("\n".join([*_port_chains(table, bridge, protocol), element]) + "\n", "-f", "-")
    if result.returncode != 0:
        raise FirewallError(
            f"nft: port {host_port}/{protocol} on {bridge}: {result.stderr.strip()}"
        )
    # A loopback destination is routed out of the bridge only with route_localnet on it.
    localnet = Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
    if localnet.read_text().strip() != "1":
        localnet.write_text("1\n")


def remove_port_forward(bridge: str, protocol: str, host_ip: str, host_port: int) -> None:
    """Stop forwarding the port; fine when it (or the whole table) is gone already."""
    table = table_name(bridge)
    if host_ip:
        args = [
            "delete",
            "element",
            "ip",
            table,
            f"{protocol}_addr",
            f"{{ {host_ip} . {host_port} }}",
        ]
    else:
        args = ["delete", "element", "ip", table, f"{protocol}_any", f"{{ {host_port} }}"]
    result = _nft("", *args)
    if result.returncode != 0 and "No such file or directory" not in result.stderr:
        raise FirewallError(f"nft: {' '.join(args)}: {result.stderr.strip()}")
