"""hcsoci: OCI spec in, container out; processes in any host through one ``Cmd``.

The public API is fixed (see docs/ and DESIGN.md); everything else is internal.

Every name is imported on first use: ``import hcsoci.paths`` (what the
``hcsoci-runc`` runtime does for each call an engine makes) must not pay for
msgspec, the spec model and the process machinery it never touches, and
networking pulls in pyroute2 (~160 ms) which a process that only runs commands
never needs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds
if TYPE_CHECKING:
    from typing import Any

    from hcsoci import context, hns, images, oci
    from hcsoci.cmd import ClosedPipeError, Cmd, ExitError, ExitState, command, command_context
    from hcsoci.cow import ProcessParameters
    from hcsoci.create import CreateOptions, create_container
    from hcsoci.errors import HcsociError, NotFoundError
    from hcsoci.local import LocalHost
    from hcsoci.network import get_namespace_endpoints
    from hcsoci.resources import Resources, release_resources
    from hcsoci.sandbox import RunResult, container, run

_LAZY = {
    "context": ("hcsoci.context", None),
    "oci": ("hcsoci.oci", None),
    "hns": ("hcsoci.hns", None),
    "images": ("hcsoci.images", None),
    "ClosedPipeError": ("hcsoci.cmd", "ClosedPipeError"),
    "Cmd": ("hcsoci.cmd", "Cmd"),
    "ExitError": ("hcsoci.cmd", "ExitError"),
    "ExitState": ("hcsoci.cmd", "ExitState"),
    "command": ("hcsoci.cmd", "command"),
    "command_context": ("hcsoci.cmd", "command_context"),
    "ProcessParameters": ("hcsoci.cow", "ProcessParameters"),
    "CreateOptions": ("hcsoci.create", "CreateOptions"),
    "create_container": ("hcsoci.create", "create_container"),
    "HcsociError": ("hcsoci.errors", "HcsociError"),
    "NotFoundError": ("hcsoci.errors", "NotFoundError"),
    "LocalHost": ("hcsoci.local", "LocalHost"),
    "get_namespace_endpoints": ("hcsoci.network", "get_namespace_endpoints"),
    "Resources": ("hcsoci.resources", "Resources"),
    "release_resources": ("hcsoci.resources", "release_resources"),
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


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"container"})


import sys  # noqa: E402  (builtin: costs nothing; needed only from here on)


class _Package(type(sys)):  # type: ignore[misc]  # types.ModuleType, without importing types
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
