"""hcsoci: OCI spec in, container out; processes in any host through one ``Cmd``.

The public API is fixed (see docs/ and DESIGN.md); everything else is internal.
"""

import sys
import types
from typing import TYPE_CHECKING, Any

from hcsoci import context, oci
from hcsoci.cmd import ClosedPipeError, Cmd, ExitError, ExitState, command, command_context
from hcsoci.cow import ProcessParameters
from hcsoci.errors import HcsociError, NotFoundError
from hcsoci.local import LocalHost
from hcsoci.resources import Resources, release_resources

if TYPE_CHECKING:
    from hcsoci import hns, images
    from hcsoci.create import CreateOptions, create_container
    from hcsoci.network import get_namespace_endpoints
    from hcsoci.sandbox import RunResult, container, run

# Imported on first use: networking pulls in pyroute2 (~160 ms) and containers the
# image store, which a process that only runs commands never needs.
_LAZY = {
    "hns": ("hcsoci.hns", None),
    "images": ("hcsoci.images", None),
    "CreateOptions": ("hcsoci.create", "CreateOptions"),
    "create_container": ("hcsoci.create", "create_container"),
    "get_namespace_endpoints": ("hcsoci.network", "get_namespace_endpoints"),
    "run": ("hcsoci.sandbox", "run"),
    "RunResult": ("hcsoci.sandbox", "RunResult"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hcsoci' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``hcsoci`` itself: ``hcsoci.container`` is the sandbox function, not the submodule.

    The process-isolated container lives in the submodule ``hcsoci.container``;
    importing it makes the import system bind the submodule as the package's
    ``container`` attribute.  This property keeps the public name the function
    (:func:`hcsoci.sandbox.container`); the submodule stays reachable as
    ``sys.modules["hcsoci.container"]`` and by ``from hcsoci.container import ...``.
    """

    @property
    def container(self) -> Any:
        from hcsoci.sandbox import container

        return container

    @container.setter
    def container(self, value: Any) -> None:
        """The import system binding the submodule: left in ``sys.modules`` only."""


sys.modules[__name__].__class__ = _Package

__all__ = [
    "ClosedPipeError",
    "Cmd",
    "CreateOptions",
    "ExitError",
    "ExitState",
    "HcsociError",
    "LocalHost",
    "NotFoundError",
    "ProcessParameters",
    "Resources",
    "RunResult",
    "command",
    "command_context",
    "container",
    "context",
    "create_container",
    "get_namespace_endpoints",
    "hns",
    "images",
    "oci",
    "release_resources",
    "run",
]
