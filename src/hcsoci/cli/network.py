"""``hcsoci network ...`` and ``hcsoci endpoint ...``: HNS networks and endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click
import msgspec

from hcsoci import hns
from hcsoci.cli.common import fail, remove_each
from hcsoci.errors import HcsociError, NotFoundError


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _emit(
    items: Sequence[Any], as_json: bool, header: Sequence[str], row: Callable[[Any], Sequence[str]]
) -> None:
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(items)).decode())
    else:
        _table([row(item) for item in items], header)


def _endpoint(ref: str) -> hns.Endpoint:
    try:
        return hns.get_endpoint_by_id(ref)
    except NotFoundError:
        return hns.get_endpoint_by_name(ref)


@click.group("network")
def network_group() -> None:
    """HNS networks: a bridge with the subnet's gateway, optionally NATed."""


@network_group.command("create")
@click.argument("name")
@click.option("--subnet", required=True, help="IPv4 subnet in CIDR notation, e.g. 10.201.3.0/24.")
@click.option("--nat", is_flag=True, help="Masquerade the subnet's traffic leaving the host.")
@click.option("--dns", "dns_servers", multiple=True, help="DNS server for endpoints (repeatable).")
def network_create(name: str, subnet: str, nat: bool, dns_servers: tuple[str, ...]) -> None:
    """Create network NAME; prints its id."""
    try:
        network = hns.create_network(name, subnet, "nat" if nat else "bridge", dns_servers)
    except HcsociError as err:
        fail(err)
    click.echo(network.id)


@network_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def network_list(as_json: bool) -> None:
    """List networks."""
    _emit(
        hns.list_networks(),
        as_json,
        ("ID", "NAME", "TYPE", "SUBNET", "GATEWAY", "BRIDGE"),
        lambda n: (n.id, n.name, n.type, n.subnet, n.gateway, n.bridge),
    )


@network_group.command("rm")
@click.argument("networks", nargs=-1, required=True)
def network_rm(networks: tuple[str, ...]) -> None:
    """Delete networks (by id or name); refused while they have endpoints."""
    remove_each(networks, lambda ref: hns.delete_network(hns.get_network(ref).id))


@click.group("endpoint")
def endpoint_group() -> None:
    """HNS endpoints: veth pairs with an address on a network."""


@endpoint_group.command("create")
@click.argument("network")
@click.option("--name", default="", help="Endpoint name (default: its id).")
def endpoint_create(network: str, name: str) -> None:
    """Create an endpoint on NETWORK (id or name); prints its id."""
    try:
        endpoint = hns.create_endpoint(hns.get_network(network).id, name)
    except HcsociError as err:
        fail(err)
    click.echo(endpoint.id)


@endpoint_group.command("list")
@click.option("--network", default="", help="Only endpoints of this network (id or name).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def endpoint_list(network: str, as_json: bool) -> None:
    """List endpoints."""
    try:
        network_id = hns.get_network(network).id if network else ""
    except HcsociError as err:
        fail(err)
    _emit(
        hns.list_endpoints(network_id),
        as_json,
        ("ID", "NAME", "NETWORK", "IP", "MAC", "NAMESPACE"),
        lambda e: (
            e.id,
            e.name,
            e.virtual_network_name,
            f"{e.ip_address}/{e.prefix_length}",
            e.mac_address,
            e.namespace or "-",
        ),
    )


@endpoint_group.command("rm")
@click.argument("endpoints", nargs=-1, required=True)
def endpoint_rm(endpoints: tuple[str, ...]) -> None:
    """Delete endpoints (by id or name); refused while one is in a namespace."""
    remove_each(endpoints, lambda ref: hns.delete_endpoint(_endpoint(ref).id))


def register(group: click.Group) -> None:
    """Add the ``network`` and ``endpoint`` command families to ``group``."""
    group.add_command(network_group)
    group.add_command(endpoint_group)
