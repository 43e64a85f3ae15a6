"""hcsoci: OCI spec in, container out; processes in any host through one ``Cmd``.

The public API is fixed (see docs/ and DESIGN.md); everything else is internal.
"""

from hcsoci import context, hns, images, oci
from hcsoci.cmd import ClosedPipeError, Cmd, ExitError, ExitState, command, command_context
from hcsoci.cow import ProcessParameters
from hcsoci.create import CreateOptions, create_container
from hcsoci.errors import HcsociError, NotFoundError
from hcsoci.local import LocalHost
from hcsoci.network import get_namespace_endpoints
from hcsoci.resources import Resources, release_resources

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
    "command",
    "command_context",
    "context",
    "create_container",
    "get_namespace_endpoints",
    "hns",
    "images",
    "oci",
    "release_resources",
]
