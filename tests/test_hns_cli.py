"""``hcsoci network`` and ``hcsoci endpoint`` through the real command group."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fixtures_hns import HnsLab, free_subnet
from hcsoci import hns
from hcsoci.cli.main import cli
from hcsoci.hns import firewall, netlink


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_network_and_endpoint_commands(lab: HnsLab) -> None:
    name = f"{lab.network_prefix}cli"
    subnet = free_subnet()
    code, out = run("network", "create", name, "--subnet", subnet, "--nat")
    assert code == 0, out
    network = hns.get_network_by_name(name)
    assert out.strip() == network.id and network.type == "nat"
    assert firewall.table_name(network.bridge) in firewall.network_tables()

    code, out = run("network", "list")
    assert code == 0 and name in out and subnet in out
    code, out = run("network", "list", "--json")
    assert any(item["id"] == network.id for item in json.loads(out))

    code, out = run("endpoint", "create", name, "--name", f"e{lab.token}")
    assert code == 0, out
    endpoint = hns.get_endpoint_by_id(out.strip())
    assert endpoint.name == f"e{lab.token}"
    assert not netlink.link_exists(endpoint.host_interface)  # its pair is born at the first add
    code, out = run("endpoint", "list", "--network", name)
    assert code == 0 and endpoint.ip_address in out and endpoint.mac_address in out

    code, out = run("network", "rm", name)  # refused: it has an endpoint
    assert code == 1 and "still has 1 endpoint" in out
    code, out = run("network", "create", f"{lab.network_prefix}x", "--subnet", subnet)
    assert code == 1 and "overlaps" in out

    code, out = run("endpoint", "rm", f"e{lab.token}")
    assert code == 0, out
    assert not netlink.link_exists(endpoint.host_interface)
    code, out = run("network", "rm", name)
    assert code == 0, out
    assert not netlink.link_exists(network.bridge)
    code, out = run("endpoint", "create", "no-such-network")
    assert code == 1 and "no-such-network" in out and "not found" in out
