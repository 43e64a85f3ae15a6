"""Container networking: a namespace with the spec's endpoints (the seed's network.go).

:func:`setup_container_network` is what :func:`hcsoci.create_container` calls.
A spec whose ``windows.network.endpoint_list`` names endpoints gets a new
namespace with those endpoints added, each step recorded in the container's
:class:`~hcsoci.resources.Resources` *before* it is made (the namespace first,
then each endpoint in order), so :func:`~hcsoci.release_resources` takes the
endpoints back out and then deletes the namespace.  A namespace passed in
``CreateOptions.network_namespace`` is used as it is and never deleted.
Either way the spec's ``network`` namespace is pointed at the namespace's file.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import uuid
from types import ModuleType
from typing import TYPE_CHECKING

from hcsoci import oci
from hcsoci.context import Context
from hcsoci.errors import NotFoundError, StateError
from hcsoci.resources import Resource, Resources

if TYPE_CHECKING:
    from hcsoci import hns
    from hcsoci.uvm import UtilityVM

__all__ = [
    "CreatedEndpoint",
    "CreatedNamespace",
    "NamespaceEndpoint",
    "create_container_endpoint",
    "get_namespace_endpoints",
    "namespace_file",
    "point_spec_at_namespace",
    "setup_container_network",
]

log = logging.getLogger(__name__)


def _hns() -> ModuleType:
    """:mod:`hcsoci.hns`, imported on first use: it brings pyroute2 (a tenth of a second),
    which a container without networking (in a VM or not) never needs."""
    return importlib.import_module("hcsoci.hns")


class CreatedNamespace(Resource, kw_only=True):
    """A network namespace created for a container: removed on release."""

    kind = "hns-namespace"
    namespace_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        with contextlib.suppress(NotFoundError):
            _hns().remove_namespace(self.namespace_id)


class NamespaceEndpoint(Resource, kw_only=True):
    """An endpoint added to a container's namespace: taken back out on release."""

    kind = "hns-namespace-endpoint"
    namespace_id: str
    endpoint_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        # NotFoundError: never added, already removed, or its namespace/endpoint is gone.
        with contextlib.suppress(NotFoundError):
            _hns().remove_namespace_endpoint(self.namespace_id, self.endpoint_id)


class CreatedEndpoint(Resource, kw_only=True):
    """An endpoint created for one container (``hcsoci run --network``): deleted on release."""

    kind = "hns-endpoint"
    endpoint_id: str

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        with contextlib.suppress(NotFoundError):
            _hns().delete_endpoint(self.endpoint_id)


def namespace_file(network_namespace: str) -> str:
    """The nsfs file of ``network_namespace``: an hns namespace id, or a namespace file path."""
    try:
        path: str = _hns().get_namespace(network_namespace).path
        return path
    except NotFoundError:
        from hcsoci.hns.netlink import is_netns

        if os.path.isabs(network_namespace) and is_netns(network_namespace):
            return network_namespace
        raise NotFoundError(
            f"network_namespace {network_namespace!r}: no such hns namespace "
            "or network namespace file"
        ) from None


def setup_container_network(
    ctx: Context, resources: Resources, spec: oci.Spec, network_namespace: str
) -> None:
    """Give the container a network namespace (the seed's ``createNetworkNamespace``).

    With ``network_namespace`` (an hns namespace id or a namespace file) the
    container joins it; it is not recorded, so release never deletes it.
    Otherwise, if ``spec.windows.network.endpoint_list`` names endpoints, a new
    namespace is created and they are added to it, in order, each recorded in
    ``resources`` first.  Sets ``resources.net_ns`` and points the spec's
    ``network`` namespace (``spec.linux.namespaces``) at the namespace file.
    """
    network = spec.windows.network if spec.windows is not None else None
    endpoint_ids = list(network.endpoint_list or []) if network is not None else []
    if network_namespace:
        path = namespace_file(network_namespace)
        resources.net_ns = network_namespace
    elif endpoint_ids:
        _check_endpoints(endpoint_ids)
        namespace_id = str(uuid.uuid4())
        resources.add(CreatedNamespace(namespace_id=namespace_id))
        _hns().create_namespace(namespace_id)
        resources.net_ns = namespace_id
        log.info("created network namespace %s for container %s", namespace_id, resources.owner_id)
        for endpoint_id in endpoint_ids:
            ctx.check()
            resources.add(NamespaceEndpoint(namespace_id=namespace_id, endpoint_id=endpoint_id))
            _hns().add_namespace_endpoint(namespace_id, endpoint_id)
            log.info("added network endpoint %s to namespace %s", endpoint_id, namespace_id)
        path = _hns().namespace_path(namespace_id)
    else:
        return
    point_spec_at_namespace(spec, path)


def _check_endpoints(endpoint_ids: list[str]) -> None:
    """Refuse unknown or busy endpoints before anything is allocated."""
    for index, endpoint_id in enumerate(endpoint_ids):
        try:
            endpoint = _hns().get_endpoint_by_id(endpoint_id)
        except NotFoundError:
            raise NotFoundError(
                f"spec.windows.network.endpoint_list[{index}]: endpoint {endpoint_id!r} not found"
            ) from None
        if endpoint.namespace:
            raise StateError(
                f"spec.windows.network.endpoint_list[{index}]: endpoint {endpoint_id} is "
                f"already in namespace {endpoint.namespace}"
            )
    if len(set(endpoint_ids)) != len(endpoint_ids):
        raise StateError(f"spec.windows.network.endpoint_list {endpoint_ids}: an endpoint twice")


def point_spec_at_namespace(spec: oci.Spec, path: str) -> None:
    """Point the spec's ``network`` namespace at ``path`` (adding the entry if missing)."""
    if spec.linux is None:
        spec.linux = oci.Linux()
    namespaces = spec.linux.namespaces = list(spec.linux.namespaces or [])
    for namespace in namespaces:
        if namespace.type == "network":
            namespace.path = path
            return
    namespaces.append(oci.LinuxNamespace(type="network", path=path))


def create_container_endpoint(resources: Resources, spec: oci.Spec, network: str) -> hns.Endpoint:
    """Create an endpoint on ``network`` (id or name) for one container and list it in ``spec``.

    The endpoint is recorded in ``resources`` before it exists, so releasing them
    deletes it (after the namespace that holds it is gone): how
    ``hcsoci run --network NAME`` gets a throwaway endpoint.
    """
    target = _hns().get_network(network)
    endpoint_id = str(uuid.uuid4())
    resources.add(CreatedEndpoint(endpoint_id=endpoint_id))
    endpoint: hns.Endpoint = _hns().create_endpoint(target.id, endpoint_id=endpoint_id)
    if spec.windows is None:
        spec.windows = oci.Windows()
    if spec.windows.network is None:
        spec.windows.network = oci.WindowsNetwork()
    spec.windows.network.endpoint_list = [*(spec.windows.network.endpoint_list or []), endpoint.id]
    return endpoint


def get_namespace_endpoints(ctx: Context, net_ns: str) -> list[hns.Endpoint]:
    """The endpoints in namespace ``net_ns``, ``eth0``'s first (``GetNamespaceEndpoints``).

    Unlike :func:`hcsoci.hns.get_namespace_endpoints`, which gives ids, these
    are full :class:`hcsoci.hns.Endpoint` records.
    """
    hns_module = _hns()
    endpoints: list[hns.Endpoint] = [
        hns_module.get_endpoint_by_id(endpoint_id)
        for endpoint_id in hns_module.get_namespace_endpoints(net_ns)
    ]
    return endpoints
