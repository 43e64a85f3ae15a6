"""Every kind of resource record hcsoci writes, imported by name: the registry, explicitly.

A record in the state store names its kind (``Resource.kind``); to release it
from another process -- ``hcsoci gc`` after a controller was killed, ``hcsoci
delete`` -- the class of that kind must be known there.  Importing this module
registers every kind, so :func:`hcsoci.resources.load_resources` works in a
fresh process.  A module that defines a new kind is added here.
"""

from __future__ import annotations

from hcsoci import create, layers, mounts, network, oom_cgroup, ports, sandbox
from hcsoci.uvm import guest_resources, plan9, scsi, vpmem
from hcsoci.uvm import network as uvm_network

__all__ = ["MODULES"]

MODULES = (
    create, layers, mounts, network, oom_cgroup, ports, sandbox,
    guest_resources, uvm_network, plan9, scsi, vpmem,
)  # fmt: skip
"""The modules whose ``Resource`` subclasses are the kinds (see ``resources.resource_kinds``)."""
