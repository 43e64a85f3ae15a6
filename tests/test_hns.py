"""hcsoci.hns on real bridges, veth pairs, network namespaces and nftables."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile

import pytest
from pyroute2 import IPRoute

from fixtures_hns import (
    BUSYBOX,
    HnsLab,
    cannot_fetch,
    fetch,
    free_subnet,
    http_server,
    in_netns,
)
from hcsoci import hns
from hcsoci.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StateError,
)
from hcsoci.hns import firewall, netlink
from hcsoci.hns.state import store


def link(name: str) -> dict[str, object] | None:
    """The host-namespace link ``name`` as a dict of the fields the tests look at."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        msg = ipr.get_links(found[0])[0]
        addrs = [
            f"{a.get('address')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=found[0])
            if a["family"] == 2
        ]
        return {
            "mac": msg.get("address"),
            "master": msg.get("master"),
            "up": bool(msg["flags"] & 1),
            "addresses": addrs,
        }


def ns_ip(path: str, *args: str) -> str:
    result = in_netns(path, "ip", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- networks ---


def test_network_is_a_bridge_holding_the_gateway(lab: HnsLab) -> None:
    network = lab.network()
    subnet = ipaddress.IPv4Network(network.subnet)
    assert network.gateway == str(subnet.network_address + 1)
    bridge = link(network.bridge)
    assert bridge is not None and bridge["up"]
    assert bridge["addresses"] == [f"{network.gateway}/{subnet.prefixlen}"]
    assert network in hns.list_networks()
    assert hns.get_network_by_id(network.id) == network
    assert hns.get_network_by_name(network.name) == network
    hns.delete_network(network.id)
    assert link(network.bridge) is None
    with pytest.raises(NotFoundError):
        hns.get_network_by_id(network.id)


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("10.201.0.0", "CIDR"),
        ("10.201.0.5/24", "host bits"),
        ("fd00::/64", "IPv4"),
        ("10.201.0.0/31", "/31"),
        ("nonsense/8", "nonsense"),
    ],
)
def test_bad_subnets_are_refused_naming_the_value(subnet: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match="subnet") as caught:
        hns.create_network("bad", subnet)
    assert message in str(caught.value) and subnet in str(caught.value)


def test_bad_names_and_types_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="network name ''"):
        hns.create_network("", "10.201.0.0/24")
    with pytest.raises(InvalidArgumentError, match="network type 'overlay'"):
        hns.create_network("x", "10.201.0.0/24", "overlay")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"dns server 'dns\.example'"):
        hns.create_network("x", "10.201.0.0/24", dns_servers=["dns.example"])


def test_overlapping_subnets_and_taken_names_are_refused(lab: HnsLab) -> None:
    network = lab.network()
    wider = str(ipaddress.IPv4Network(network.subnet).supernet(new_prefix=20))
    before = len(hns.list_networks())
    with pytest.raises(InvalidArgumentError, match="overlaps") as caught:
        hns.create_network(f"t{lab.token}-other", wider)
    assert wider in str(caught.value) and network.bridge in str(caught.value)
    with pytest.raises(InvalidArgumentError, match="overlaps"):
        hns.create_network(f"t{lab.token}-other", "127.0.0.0/24")  # lo's subnet
    # A subnet free of every network (a fixed one was the lab's own 1 run in 256).
    with pytest.raises(AlreadyExistsError, match=network.id):
        hns.create_network(network.name, free_subnet(30))
    assert len(hns.list_networks()) == before


def test_nat_network_masquerades_its_subnet_and_removes_the_rule(lab: HnsLab) -> None:
    network = lab.network("nat")
    table = firewall.table_name(network.bridge)
    assert table in firewall.network_tables()
    rules = subprocess.run(
        ["nft", "-j", "list", "table", "ip", table], capture_output=True, text=True, check=True
    ).stdout
    assert "masquerade" in rules and network.subnet.split("/")[0] in rules
    hns.delete_network(network.id)
    assert table not in firewall.network_tables()
    assert link(network.bridge) is None


def test_nat_network_hides_endpoints_behind_the_host_address(lab: HnsLab) -> None:
    """An endpoint reaches an 'outside' namespace (made by the test) as the host's address."""
    network = lab.network("nat")
    endpoint = lab.endpoint(network)
    inside = lab.namespace()
    hns.add_namespace_endpoint(inside, endpoint.id)
    # The outside world: a namespace of our own behind a veth, on a 172.30.x subnet.
    outside = f"/var/run/netns/t{lab.token}-out"
    lab.extra_netns.append(outside)
    netlink.create_netns(outside)
    host_side, far_side = f"to{lab.token}", f"tf{lab.token}"
    lab.extra_links.append(host_side)
    third = int(lab.token[:2], 16)
    with IPRoute() as ipr:
        ipr.link("add", ifname=host_side, kind="veth", peer={"ifname": far_side})
        far = ipr.link_lookup(ifname=far_side)[0]
        fd = os.open(outside, os.O_RDONLY)
        try:
            ipr.link("set", index=far, net_ns_fd=fd)
        finally:
            os.close(fd)
        host = ipr.link_lookup(ifname=host_side)[0]
        ipr.addr("add", index=host, address=f"172.30.{third}.1", prefixlen=24)
        ipr.link("set", index=host, state="up")
    with netlink.netns_route(outside) as ns:
        far = ns.link_lookup(ifname=far_side)[0]
        ns.addr("add", index=far, address=f"172.30.{third}.2", prefixlen=24)
        ns.link("set", index=far, state="up")
    # httpd logs each client address with -v to stderr; the CGI-less page is enough.
    with tempfile.TemporaryDirectory() as www:
        with open(os.path.join(www, "index.html"), "w") as page:
            page.write("outside\n")
        server = subprocess.Popen(
            [
                "nsenter",
                f"--net={outside}",
                BUSYBOX,
                "httpd",
                "-f",
                "-vv",
                "-p",
                f"172.30.{third}.2:8080",
                "-h",
                www,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            body = fetch(hns.namespace_path(inside), f"http://172.30.{third}.2:8080/")
        finally:
            server.kill()
            _, log = server.communicate()
    assert body == "outside\n", log
    assert f"172.30.{third}.1" in log and endpoint.ip_address not in log


# --- endpoints ---


def test_endpoint_is_a_veth_on_the_bridge_with_a_stable_local_mac(lab: HnsLab) -> None:
    network = lab.network()
    namespace = lab.namespace()
    endpoint = lab.endpoint(network, name=f"ep{lab.token}")
    assert endpoint.name == f"ep{lab.token}"
    assert endpoint.virtual_network == network.id
    assert endpoint.virtual_network_name == network.name
    assert endpoint.ip_address == str(ipaddress.IPv4Network(network.subnet).network_address + 2)
    assert endpoint.prefix_length == 24 and endpoint.gateway_address == network.gateway
    assert endpoint.mac_address == hns.ipam.endpoint_mac(endpoint.id)
    first_octet = int(endpoint.mac_address.split(":")[0], 16)
    assert first_octet & 0x02 and not first_octet & 0x01  # locally administered unicast
    # A record until its first add: the veth pair is born then, its peer directly
    # inside the namespace (no namespace move, see docs/networking.md).
    assert link(endpoint.host_interface) is None and link(endpoint.interface) is None
    assert hns.get_endpoint_by_name(endpoint.name) == endpoint
    assert endpoint in hns.list_endpoints(network.id)
    with IPRoute() as ipr:
        bridge = ipr.link_lookup(ifname=network.bridge)[0]
    hns.add_namespace_endpoint(namespace, endpoint.id)
    host = link(endpoint.host_interface)
    assert host is not None and host["master"] == bridge and host["up"]
    assert link(endpoint.interface) is None
    assert endpoint.mac_address in ns_ip(hns.namespace_path(namespace), "link", "show", "eth0")
    hns.remove_namespace_endpoint(namespace, endpoint.id)
    # Back out: the same pair, host side still on the bridge, peer down, no address.
    host, peer = link(endpoint.host_interface), link(endpoint.interface)
    assert host is not None and host["master"] == bridge and host["up"]
    assert peer is not None and peer["mac"] == endpoint.mac_address and not peer["addresses"]
    assert not peer["up"]
    hns.delete_endpoint(endpoint.id)
    assert link(endpoint.host_interface) is None and link(endpoint.interface) is None
    with pytest.raises(NotFoundError):
        hns.get_endpoint_by_id(endpoint.id)


def test_delete_network_is_refused_while_endpoints_exist(lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    with pytest.raises(StateError, match=endpoint.id) as caught:
        hns.delete_network(network.id)
    assert network.id in str(caught.value)
    assert link(network.bridge) is not None
    hns.delete_endpoint(endpoint.id)
    hns.delete_network(network.id)


def test_full_subnet_is_a_clear_error_leaving_nothing(lab: HnsLab) -> None:
    network = lab.network(prefix=30)  # gateway + one endpoint
    lab.endpoint(network)
    links_before = set(netlink.list_links())
    with pytest.raises(hns.SubnetFullError, match=f"network {network.id}.*full"):
        hns.create_endpoint(network.id)
    assert len(hns.list_endpoints(network.id)) == 1
    assert set(netlink.list_links()) == links_before


def test_addresses_are_reused_after_delete(lab: HnsLab) -> None:
    network = lab.network()
    first, second = lab.endpoint(network), lab.endpoint(network)
    hns.delete_endpoint(first.id)
    third = lab.endpoint(network)
    assert third.ip_address == first.ip_address != second.ip_address


def test_unknown_ids_are_not_found_errors(lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    namespace = lab.namespace()
    missing = "00000000-0000-0000-0000-000000000000"
    calls = [
        (hns.delete_network, (missing,)),
        (hns.get_network_by_id, (missing,)),
        (hns.create_endpoint, (missing,)),
        (hns.get_endpoint_by_id, (missing,)),
        (hns.delete_endpoint, (missing,)),
        (hns.remove_namespace, (missing,)),
        (hns.get_namespace_endpoints, (missing,)),
        (hns.add_namespace_endpoint, (missing, endpoint.id)),
        (hns.add_namespace_endpoint, (namespace, missing)),
        (hns.remove_namespace_endpoint, (namespace, missing)),
        (hns.remove_namespace_endpoint, (namespace, endpoint.id)),  # not in it
    ]
    for call, args in calls:
        with pytest.raises(FileNotFoundError) as caught:
            call(*args)  # type: ignore[operator]
        assert isinstance(caught.value, NotFoundError)
        assert missing in str(caught.value) or endpoint.id in str(caught.value), call


def test_fifty_parallel_processes_get_distinct_addresses(lab: HnsLab) -> None:
    network = lab.network()
    code = "import sys; from hcsoci import hns; print(hns.create_endpoint(sys.argv[1]).id)"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, network.id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(50)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    ids = [out.strip() for out, _ in outputs if out.strip()]
    for endpoint_id in ids:
        lab.track_endpoint(endpoint_id)
    assert all(child.returncode == 0 for child in children), [err for _, err in outputs if err]
    endpoints = hns.list_endpoints(network.id)
    assert len(ids) == 50 and len(endpoints) == 50
    addresses = [e.ip_address for e in endpoints]
    assert len(set(addresses)) == 50
    assert all(link(e.host_interface) is None for e in endpoints)  # born at the first add


# --- namespaces ---


def test_namespace_outlives_the_process_that_created_it(lab: HnsLab) -> None:
    code = "from hcsoci import hns; print(hns.create_namespace())"
    namespace_id = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    lab.namespaces.append(namespace_id)
    path = hns.namespace_path(namespace_id)
    assert netlink.is_netns(path)
    assert "UP" in ns_ip(path, "-br", "link", "show", "lo")
    hns.remove_namespace(namespace_id)
    assert not os.path.exists(path)
    with pytest.raises(NotFoundError):
        hns.remove_namespace(namespace_id)


def test_endpoints_in_two_namespaces_talk_and_come_back_out_intact(lab: HnsLab) -> None:
    network = lab.network()
    server, client = lab.endpoint(network), lab.endpoint(network)
    server_ns, client_ns = lab.namespace(), lab.namespace()
    hns.add_namespace_endpoint(server_ns, server.id)
    hns.add_namespace_endpoint(client_ns, client.id)
    hns.add_namespace_endpoint(client_ns, client.id)  # again: nothing changes
    attached = hns.get_endpoint_by_id(server.id)
    assert attached.namespace == server_ns and attached.namespace_interface == "eth0"
    path = hns.namespace_path(server_ns)
    addresses = ns_ip(path, "-o", "-4", "addr", "show", "dev", "eth0")
    assert f"{server.ip_address}/24" in addresses
    assert f"default via {network.gateway} dev eth0" in ns_ip(path, "route")
    assert server.mac_address in ns_ip(path, "link", "show", "eth0")
    assert "UP" in ns_ip(path, "-br", "link", "show", "lo")
    assert link(server.interface) is None  # moved, not copied

    with tempfile.TemporaryDirectory() as www:
        with open(os.path.join(www, "hello"), "w") as page:
            page.write(f"hello {lab.token}\n")
        with http_server(path, server.ip_address, www) as url:
            assert fetch(hns.namespace_path(client_ns), f"{url}/hello") == f"hello {lab.token}\n"

    hns.remove_namespace_endpoint(server_ns, server.id)
    back = link(server.interface)
    assert back is not None and back["mac"] == server.mac_address and not back["addresses"]
    assert hns.get_namespace_endpoints(server_ns) == []
    assert hns.get_endpoint_by_id(server.id).namespace == ""
    # Moved to another namespace, it keeps its address.
    hns.add_namespace_endpoint(client_ns, server.id)
    assert hns.get_namespace_endpoints(client_ns) == [client.id, server.id]
    client_path = hns.namespace_path(client_ns)
    assert f"{server.ip_address}/24" in ns_ip(client_path, "-o", "-4", "addr", "show", "eth1")


def test_second_endpoint_takes_over_the_default_route(lab: HnsLab) -> None:
    first_net, second_net = lab.network(), lab.network()
    first, second = lab.endpoint(first_net), lab.endpoint(second_net)
    namespace = lab.namespace()
    hns.add_namespace_endpoint(namespace, first.id)
    hns.add_namespace_endpoint(namespace, second.id)
    path = hns.namespace_path(namespace)
    assert f"default via {first_net.gateway} dev eth0" in ns_ip(path, "route")
    hns.remove_namespace_endpoint(namespace, first.id)
    assert f"default via {second_net.gateway} dev eth1" in ns_ip(path, "route")


def test_endpoint_in_another_namespace_is_refused_naming_both(lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    first, second = lab.namespace(), lab.namespace()
    hns.add_namespace_endpoint(first, endpoint.id)
    with pytest.raises(StateError) as caught:
        hns.add_namespace_endpoint(second, endpoint.id)
    message = str(caught.value)
    assert endpoint.id in message and first in message and second in message
    assert hns.get_endpoint_by_id(endpoint.id).namespace == first
    assert hns.get_namespace_endpoints(second) == []
    with pytest.raises(StateError, match="remove it from the namespace first"):
        hns.delete_endpoint(endpoint.id)


def test_vanished_namespace_is_a_clear_error_and_is_recovered(lab: HnsLab) -> None:
    network = lab.network()
    inside, outside = lab.endpoint(network), lab.endpoint(network)
    gone, alive = lab.namespace(), lab.namespace()
    hns.add_namespace_endpoint(gone, inside.id)
    netlink.remove_netns(hns.namespace_path(gone))  # behind hcsoci's back
    with pytest.raises(NotFoundError, match=f"namespace {gone} vanished"):
        hns.add_namespace_endpoint(gone, outside.id)
    assert hns.get_endpoint_by_id(outside.id).namespace == ""
    assert link(outside.interface) is None  # left as it was: never added, no pair yet
    # Removing the endpoint from the vanished namespace recreates its veth pair.
    hns.remove_namespace_endpoint(gone, inside.id)
    recreated = link(inside.interface)
    assert recreated is not None and recreated["mac"] == inside.mac_address
    hns.add_namespace_endpoint(alive, inside.id)
    assert f"{inside.ip_address}/24" in ns_ip(hns.namespace_path(alive), "-o", "-4", "addr")
    hns.remove_namespace(gone)
    with pytest.raises(NotFoundError):
        hns.get_namespace(gone)


def test_remove_namespace_brings_its_endpoints_out(lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    namespace = lab.namespace()
    hns.add_namespace_endpoint(namespace, endpoint.id)
    hns.remove_namespace(namespace)
    assert not os.path.exists(hns.namespace_path(namespace))
    back = link(endpoint.interface)
    assert back is not None and back["mac"] == endpoint.mac_address
    assert hns.get_endpoint_by_id(endpoint.id).namespace == ""


def test_two_networks_are_isolated_even_with_forwarding_on(lab: HnsLab) -> None:
    red, blue = lab.network(), lab.network("nat")  # a nat network turns forwarding on
    red_server, red_client, blue_client = lab.endpoint(red), lab.endpoint(red), lab.endpoint(blue)
    red_ns, red_client_ns, blue_ns = lab.namespace(), lab.namespace(), lab.namespace()
    hns.add_namespace_endpoint(red_ns, red_server.id)
    hns.add_namespace_endpoint(red_client_ns, red_client.id)
    hns.add_namespace_endpoint(blue_ns, blue_client.id)
    with open("/proc/sys/net/ipv4/ip_forward") as forward:
        assert forward.read().strip() == "1"
    with tempfile.TemporaryDirectory() as www:
        with open(os.path.join(www, "x"), "w") as page:
            page.write("x")
        with http_server(hns.namespace_path(red_ns), red_server.ip_address, www) as url:
            assert fetch(hns.namespace_path(red_client_ns), f"{url}/x") == "x"
            assert cannot_fetch(hns.namespace_path(blue_ns), f"{url}/x")
    table = firewall.table_name(red.bridge)
    rules = subprocess.run(
        ["nft", "list", "table", "ip", table], capture_output=True, text=True, check=True
    ).stdout
    assert f'oifname "{firewall.BRIDGE_PREFIX}*" drop' in rules


# --- gc ---


def _killed_at(step: str, code: str) -> None:
    """Run ``code`` in a child that SIGKILLs itself right after ``step`` did its kernel work."""
    prologue = (
        "import os, signal, sys\n"
        "from hcsoci.hns import netlink\n"
        f"real = getattr(netlink, {step!r})\n"
        "def dying(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"setattr(netlink, {step!r}, dying)\n"
    )
    child = subprocess.run([sys.executable, "-c", prologue + code], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr


def test_gc_reclaims_what_a_killed_controller_left(lab: HnsLab) -> None:
    from hcsoci.context import background

    network = lab.network()
    endpoint, doomed = lab.endpoint(network), lab.endpoint(network)
    namespace = lab.namespace()
    hns.add_namespace_endpoint(namespace, doomed.id)  # gives it a veth pair...
    hns.remove_namespace_endpoint(namespace, doomed.id)  # ...now out in this namespace
    links_before = set(netlink.list_links())
    assert {doomed.host_interface, doomed.interface} <= links_before
    netns_before = set(os.listdir(netlink.NETNS_RUN_DIR))
    # Killed after its pair was born in the namespace and configured, before recording it.
    _killed_at(
        "attach_interface",
        f"from hcsoci import hns; hns.add_namespace_endpoint({namespace!r}, {endpoint.id!r})",
    )
    with pytest.raises(StateError, match="run `hcsoci gc`"):
        hns.add_namespace_endpoint(namespace, endpoint.id)
    # Killed after deleting an endpoint's veth pair, before forgetting it.
    _killed_at("delete_link", f"from hcsoci import hns; hns.delete_endpoint({doomed.id!r})")
    # Killed after creating a namespace / a bridge.
    _killed_at("create_netns", "from hcsoci import hns; hns.create_namespace()")
    namespaces_before = {n.id for n in hns.list_namespaces()}
    _killed_at(
        "create_bridge",
        f"from hcsoci import hns; hns.create_network("
        f"'{lab.network_prefix}killed', {free_subnet()!r})",
    )
    lab.namespaces += [n.id for n in hns.list_namespaces() if n.id not in namespaces_before]
    assert set(netlink.list_links()) != links_before
    done = hns.gc(background())
    assert any(f"endpoint {endpoint.id} out of namespace {namespace}" in line for line in done)
    assert sum(f"half-deleted endpoint {doomed.id}" in line for line in done) == 1, done
    assert sum("left creating" in line for line in done) >= 2, done
    # The endpoint brought out has its pair in this namespace; the doomed one is gone.
    expected = links_before - {doomed.host_interface, doomed.interface}
    assert set(netlink.list_links()) == expected | {endpoint.host_interface, endpoint.interface}
    assert set(os.listdir(netlink.NETNS_RUN_DIR)) == netns_before
    assert [e.id for e in hns.list_endpoints(network.id)] == [endpoint.id]
    assert not any(n.name == f"{lab.network_prefix}killed" for n in hns.list_networks())
    # The endpoint came back out intact and works again.
    assert hns.get_endpoint_by_id(endpoint.id).namespace == ""
    hns.add_namespace_endpoint(namespace, endpoint.id)
    assert hns.get_namespace_endpoints(namespace) == [endpoint.id]
    assert not any(endpoint.id in line or namespace in line for line in hns.gc(background()))


def test_gc_forgets_vanished_namespaces_and_recreates_endpoints(lab: HnsLab) -> None:
    from hcsoci.context import background

    network = lab.network()
    endpoint = lab.endpoint(network)
    namespace = lab.namespace()
    hns.add_namespace_endpoint(namespace, endpoint.id)
    netlink.remove_netns(hns.namespace_path(namespace))
    done = hns.gc(background())
    assert any(namespace in line for line in done)
    assert hns.get_endpoint_by_id(endpoint.id).namespace == ""
    assert link(endpoint.host_interface) is not None and link(endpoint.interface) is not None
    with pytest.raises(NotFoundError):
        hns.get_namespace(namespace)


def test_state_is_in_the_store() -> None:
    tables = {row["name"] for row in store().query("SELECT name FROM sqlite_master")}
    assert {"hns_networks", "hns_endpoints", "hns_namespaces"} <= tables
    assert json.loads(json.dumps(sorted(tables)))  # plain names
