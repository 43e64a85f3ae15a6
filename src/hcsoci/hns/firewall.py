"""nftables rules of a network: isolation from other networks, and NAT for ``nat`` ones.

Each network gets its own table, ``ip hcsoci_<bridge>``, so its rules are added
and removed in one atomic ``nft -f -`` transaction and nothing else on the host
is touched.  The table always holds a forward-hook rule dropping traffic routed
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
    "enable_forwarding",
    "network_tables",
    "remove_network_rules",
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
