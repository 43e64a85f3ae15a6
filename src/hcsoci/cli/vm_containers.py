"""The container commands' part for containers in a utility VM, reached through its controller.

``hcsoci create --isolation vm [--vm ID]`` creates the container through the
VM's controller process (:mod:`hcsoci.uvm.service`; a new VM and controller
unless ``--vm`` names a running VM); ``start``, ``exec``, ``kill``, ``state``,
``ps``, ``list`` and ``delete`` then reach it from any shell through
:func:`hcsoci.container.open_container`, which returns a
:class:`~hcsoci.uvm.remote.RemoteContainer` for it.
"""

from __future__ import annotations

from collections.abc import Callable

from hcsoci import context
from hcsoci.create import CreateOptions
from hcsoci.errors import InvalidArgumentError
from hcsoci.uvm import remote
from hcsoci.uvm.options import UVMOptions

__all__ = ["creator", "print_processes"]


def creator(vm_id: str) -> Callable[[CreateOptions], remote.RemoteContainer]:
    """What makes the container of ``create --isolation vm``: its VM's controller (or a new one)."""

    def make(options: CreateOptions) -> remote.RemoteContainer:
        if options.spec is None:
            raise InvalidArgumentError("spec: None")
        return remote.create_container(
            context.background(),
            options.id,
            options.spec,
            vm=vm_id,
            owner=options.owner,
            networks=tuple(options.networks),
            vm_options=UVMOptions(owner=options.owner),
        )

    return make


def print_processes(container: remote.RemoteContainer) -> None:
    """``ps`` of a VM container: its processes' guest pids and command lines."""
    from rich.console import Console
    from rich.table import Table

    table = Table("PID", "COMMAND", caption=f"(pids in utility VM {container.vm_id})")
    for pid, command in container.processes(context.background()):
        table.add_row(str(pid), command)
    Console().print(table)
