"""Container networking: namespaces with endpoints, recorded in Resources, real containers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fixtures_containers import Created, SpecFactory
from fixtures_hns import HnsLab
from hcsoci import context, get_namespace_endpoints, hns, oci
from hcsoci.cmd import command
from hcsoci.errors import HcsociError, InvalidArgumentError, NotFoundError, StateError
from hcsoci.hns import firewall, netlink
from hcsoci.network import (
    CreatedEndpoint,
    CreatedNamespace,
    NamespaceEndpoint,
    create_container_endpoint,
    setup_container_network,
)
from hcsoci.resources import Resources, load_resources, release_resources

CTX = context.background()


def spec_with(endpoints: list[str]) -> oci.Spec:
    spec = oci.default_spec(["true"])
    spec.windows = oci.Windows(network=oci.WindowsNetwork(endpoint_list=endpoints))
    return spec


def network_namespace_path(spec: oci.Spec) -> str:
    assert spec.linux is not None and spec.linux.namespaces is not None
    paths = [n.path for n in spec.linux.namespaces if n.type == "network"]
    assert len(paths) == 1
    return paths[0]


def test_endpoints_get_a_new_namespace_recorded_in_order(lab: HnsLab) -> None:
    network = lab.network()
    first, second = lab.endpoint(network), lab.endpoint(network)
    resources = Resources(f"net-{lab.token}")
    spec = spec_with([first.id, second.id])
    setup_container_network(CTX, resources, spec, "")
    try:
        namespace = resources.net_ns
        assert namespace
        assert [type(r) for r in resources.items()] == [
            CreatedNamespace,
            NamespaceEndpoint,
            NamespaceEndpoint,
        ]
        assert [r.endpoint_id for r in resources.find(NamespaceEndpoint)] == [first.id, second.id]
        assert network_namespace_path(spec) == hns.namespace_path(namespace)
        endpoints = get_namespace_endpoints(CTX, namespace)
        assert [e.id for e in endpoints] == [first.id, second.id]
        assert [e.namespace_interface for e in endpoints] == ["eth0", "eth1"]
        assert all(isinstance(e, hns.Endpoint) and e.namespace == namespace for e in endpoints)
    finally:
        release_resources(CTX, resources)
    assert not os.path.exists(hns.namespace_path(namespace))
    assert len(resources) == 0
    for endpoint in (first, second):
        assert hns.get_endpoint_by_id(endpoint.id).namespace == ""
        assert netlink.link_exists(endpoint.interface)
    release_resources(CTX, resources)  # again: nothing left, nothing fails


def test_given_namespace_is_joined_and_never_deleted(lab: HnsLab) -> None:
    namespace = lab.namespace()
    resources = Resources(f"net-{lab.token}")
    spec = oci.default_spec(["true"])
    setup_container_network(CTX, resources, spec, namespace)
    assert resources.net_ns == namespace and len(resources) == 0
    assert network_namespace_path(spec) == hns.namespace_path(namespace)
    release_resources(CTX, resources)
    assert netlink.is_netns(hns.namespace_path(namespace))
    with pytest.raises(NotFoundError, match="network_namespace 'no-such-namespace'"):
        setup_container_network(CTX, Resources("x"), spec, "no-such-namespace")


def test_bad_endpoint_lists_allocate_nothing(lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    busy = lab.namespace()
    before = set(os.listdir(netlink.NETNS_RUN_DIR))
    resources = Resources(f"net-{lab.token}")
    with pytest.raises(NotFoundError, match=r"endpoint_list\[1\]: endpoint 'nope' not found"):
        setup_container_network(CTX, resources, spec_with([endpoint.id, "nope"]), "")
    hns.add_namespace_endpoint(busy, endpoint.id)
    with pytest.raises(StateError, match=f"{endpoint.id} is already in namespace {busy}"):
        setup_container_network(CTX, resources, spec_with([endpoint.id]), "")
    assert len(resources) == 0 and resources.net_ns == ""
    assert set(os.listdir(netlink.NETNS_RUN_DIR)) == before


def test_failure_halfway_is_released_completely(lab: HnsLab) -> None:
    good_net, broken_net = lab.network(), lab.network()
    good, broken = lab.endpoint(good_net), lab.endpoint(broken_net)
    # Break the second endpoint behind hcsoci's back: its bridge and veth are gone.
    netlink.delete_link(broken.host_interface)
    netlink.delete_link(broken_net.bridge)
    resources = Resources(f"net-{lab.token}")
    with pytest.raises(HcsociError, match=broken_net.bridge):
        setup_container_network(CTX, resources, spec_with([good.id, broken.id]), "")
    namespace = resources.net_ns
    assert netlink.is_netns(hns.namespace_path(namespace))
    assert hns.get_endpoint_by_id(broken.id).namespace == ""  # its own failure undone
    release_resources(CTX, resources)
    assert not os.path.exists(hns.namespace_path(namespace))
    assert hns.get_endpoint_by_id(good.id).namespace == ""
    assert netlink.link_exists(good.interface)


def test_records_of_a_killed_controller_are_released_by_another_process(lab: HnsLab) -> None:
    network = lab.network()
    endpoint = lab.endpoint(network)
    owner = f"killed-{lab.token}"
    code = (
        "import os, signal\n"
        "from hcsoci import context, oci\n"
        "from hcsoci.network import setup_container_network\n"
        "from hcsoci.resources import Resources\n"
        "spec = oci.default_spec(['true'])\n"
        f"spec.windows = oci.Windows(network=oci.WindowsNetwork(endpoint_list=[{endpoint.id!r}]))\n"
        f"resources = Resources({owner!r})\n"
        "setup_container_network(context.background(), resources, spec, '')\n"
        "print(resources.net_ns, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    namespace = child.stdout.strip()
    lab.namespaces.append(namespace)
    assert hns.get_namespace_endpoints(namespace) == [endpoint.id]
    resources = load_resources(owner)
    assert [r.kind for r in resources.items()] == ["hns-namespace", "hns-namespace-endpoint"]
    release_resources(CTX, resources)
    assert not os.path.exists(hns.namespace_path(namespace))
    assert hns.get_endpoint_by_id(endpoint.id).namespace == ""


# --- real containers ---


SERVER = (
    "mkdir -p /tmp/www && echo hello from $(hostname) > /tmp/www/index.html && "
    "exec httpd -f -p 8080 -h /tmp/www"
)


def wget_from(container: object, url: str) -> bytes:
    """``wget`` inside ``container`` until the server answers (it may still be starting)."""
    from hcsoci.cmd import ExitError

    last: Exception | None = None
    for _ in range(50):
        try:
            return command(container, "wget", "-q", "-O", "-", url).output()  # type: ignore[arg-type]
        except ExitError as err:
            last = err
            import time

            time.sleep(0.1)
    raise AssertionError(f"wget {url}: {last}")


def cannot_reach(container: object, url: str) -> bool:
    ctx, cancel = context.with_timeout(CTX, 2.0)
    try:
        from hcsoci.cmd import command_context

        command_context(ctx, container, "wget", "-q", "-O", "-", url).output()  # type: ignore[arg-type]
    except HcsociError:
        return True
    finally:
        cancel()
    return False


def test_two_containers_on_one_network_exchange_data(
    lab: HnsLab, created: Created, container_spec: SpecFactory
) -> None:
    network = lab.network()
    server_ep, client_ep = lab.endpoint(network), lab.endpoint(network)
    server_spec = container_spec(["sh", "-c", SERVER])
    server_spec.hostname = f"srv{lab.token}"
    assert server_spec.windows is not None
    server_spec.windows.network = oci.WindowsNetwork(endpoint_list=[server_ep.id])
    client_spec = container_spec(["sleep", "600"])
    assert client_spec.windows is not None
    client_spec.windows.network = oci.WindowsNetwork(endpoint_list=[client_ep.id])
    server, server_res = created(server_spec)
    client, _ = created(client_spec)
    server.start(CTX)
    client.start(CTX)
    body = wget_from(client, f"http://{server_ep.ip_address}:8080/")
    assert body == f"hello from srv{lab.token}\n".encode()
    assert [e.id for e in get_namespace_endpoints(CTX, server_res.net_ns)] == [server_ep.id]
    address = command(client, "ip", "-o", "-4", "addr", "show", "eth0").output().decode()
    assert f"{client_ep.ip_address}/24" in address


def test_containers_on_two_networks_cannot_reach_each_other(
    lab: HnsLab, created: Created, container_spec: SpecFactory
) -> None:
    red, blue = lab.network(), lab.network("nat")  # nat: forwarding is on
    server_ep, blue_ep = lab.endpoint(red), lab.endpoint(blue)
    server_spec = container_spec(["sh", "-c", SERVER])
    assert server_spec.windows is not None
    server_spec.windows.network = oci.WindowsNetwork(endpoint_list=[server_ep.id])
    blue_spec = container_spec(["sleep", "600"])
    assert blue_spec.windows is not None
    blue_spec.windows.network = oci.WindowsNetwork(endpoint_list=[blue_ep.id])
    server, _ = created(server_spec)
    other, _ = created(blue_spec)
    server.start(CTX)
    other.start(CTX)
    # The server is up (the host reaches it through its bridge)...
    red_probe = lab.namespace()
    probe_ep = lab.endpoint(red)
    hns.add_namespace_endpoint(red_probe, probe_ep.id)
    from fixtures_hns import fetch

    assert fetch(hns.namespace_path(red_probe), f"http://{server_ep.ip_address}:8080/")
    # ...but not from the other network.
    assert cannot_reach(other, f"http://{server_ep.ip_address}:8080/")


def test_release_leaves_no_namespace_veth_or_rule(
    lab: HnsLab, created: Created, container_spec: SpecFactory
) -> None:
    tables_before = set(firewall.network_tables())
    links_before = set(netlink.list_links())
    netns_before = set(os.listdir(netlink.NETNS_RUN_DIR))
    network = lab.network("nat")
    spec = container_spec(["sleep", "600"])
    container, resources = created(spec, networks=[network.name])
    assert spec.windows is not None and spec.windows.network is None  # the caller's: untouched
    [endpoint] = hns.list_endpoints(network.id)
    assert [r.kind for r in resources.items()][:3] == [
        "container-record",
        CreatedEndpoint.kind,
        "bundle-dir",
    ]
    container.start(CTX)
    assert netlink.is_netns(hns.namespace_path(resources.net_ns))
    assert hns.get_endpoint_by_id(endpoint.id).namespace == resources.net_ns
    container.terminate(CTX)
    container.wait()
    container.close()
    release_resources(CTX, resources)
    created.made.clear()
    with pytest.raises(NotFoundError):
        hns.get_endpoint_by_id(endpoint.id)
    hns.delete_network(network.id)
    assert set(os.listdir(netlink.NETNS_RUN_DIR)) == netns_before
    assert set(netlink.list_links()) == links_before
    assert set(firewall.network_tables()) == tables_before


def test_create_endpoint_for_a_spec_by_hand(lab: HnsLab) -> None:
    network = lab.network()
    spec = oci.default_spec(["true"])
    resources = Resources(f"by-hand-{lab.token}")
    endpoint = create_container_endpoint(resources, spec, network.name)
    assert spec.windows is not None and spec.windows.network is not None
    assert spec.windows.network.endpoint_list == [endpoint.id]
    assert [r.kind for r in resources.items()] == [CreatedEndpoint.kind]
    release_resources(CTX, resources)
    with pytest.raises(NotFoundError):
        hns.get_endpoint_by_id(endpoint.id)


def test_unknown_network_is_refused_before_anything_is_made(
    lab: HnsLab, created: Created, container_spec: SpecFactory
) -> None:
    network = lab.network()
    spec = container_spec(["true"])
    with pytest.raises(NotFoundError, match=r"CreateOptions.networks\[1\]: network 'nope'") as err:
        created(spec, networks=[network.name, "nope"])
    assert len(err.value.resources) == 0  # type: ignore[attr-defined]
    assert hns.list_endpoints(network.id) == []
    with pytest.raises(InvalidArgumentError, match=r"CreateOptions\.networks: 'web'"):
        created(spec, networks="web")


def test_failed_create_deletes_the_endpoints_it_made(
    lab: HnsLab, created: Created, container_spec: SpecFactory
) -> None:
    network = lab.network()
    spec = container_spec(["true"])
    spec.mounts = [oci.Mount(destination="/data", type="bind", source="/no/such/dir")]
    with pytest.raises(NotFoundError, match="/no/such/dir"):
        created(spec, networks=[network.id])
    assert hns.list_endpoints(network.id) == []
