"""HNS on Linux: networks, endpoints and network namespaces, through netlink.

hcsshim's HNS model, built from real Linux parts:

* a **network** (:class:`Network`) is a Linux bridge holding the gateway (the
  subnet's first host address); a ``nat`` network also masquerades its subnet
  with nftables;
* an **endpoint** (:class:`Endpoint`, HNSEndpoint's fields) is a veth pair with an
  address from the network's subnet and a stable locally administered MAC; its
  host side is a bridge port.  Like an HNS endpoint it is a record until first
  added to a namespace: the pair is born then, its peer created directly
  inside the namespace;
* a **namespace** is a named network namespace (``/var/run/netns/hcsoci-<id>``)
  that outlives its creator.  Adding an endpoint puts its other side there as
  ``eth0``, ``eth1``..., configured and up with ``lo``; removing it brings it
  back out intact (the pair then stays in the host namespace until deleted).

State (networks, endpoints, address allocations, membership) lives in the
project's SQLite store, so several processes can share it; :func:`gc` reclaims
what a killed process left half-done.  Not-found errors subclass
``FileNotFoundError``.
"""

from hcsoci.hns.endpoints import (
    create_endpoint,
    delete_endpoint,
    get_endpoint_by_id,
    get_endpoint_by_name,
    list_endpoints,
)
from hcsoci.hns.gc import gc
from hcsoci.hns.ipam import SubnetFullError
from hcsoci.hns.model import Endpoint, Namespace, Network, NetworkType
from hcsoci.hns.namespaces import (
    add_namespace_endpoint,
    create_namespace,
    get_namespace,
    get_namespace_endpoints,
    list_namespaces,
    namespace_path,
    remove_namespace,
    remove_namespace_endpoint,
)
from hcsoci.hns.netlink import PlumbingError
from hcsoci.hns.networks import (
    create_network,
    delete_network,
    get_network,
    get_network_by_id,
    get_network_by_name,
    list_networks,
)

__all__ = [
    "Endpoint",
    "Namespace",
    "Network",
    "NetworkType",
    "PlumbingError",
    "SubnetFullError",
    "add_namespace_endpoint",
    "create_endpoint",
    "create_namespace",
    "create_network",
    "delete_endpoint",
    "delete_network",
    "gc",
    "get_endpoint_by_id",
    "get_endpoint_by_name",
    "get_namespace",
    "get_namespace_endpoints",
    "get_network",
    "get_network_by_id",
    "get_network_by_name",
    "list_endpoints",
    "list_namespaces",
    "list_networks",
    "namespace_path",
    "remove_namespace",
    "remove_namespace_endpoint",
]
