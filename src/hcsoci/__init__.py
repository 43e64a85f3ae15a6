"""hcsoci: OCI spec in, container out; processes in any host through one ``Cmd``.

The public API is fixed (see docs/ and DESIGN.md); everything else is internal.
"""

from hcsoci import context
from hcsoci.cow import ProcessParameters
from hcsoci.errors import HcsociError, NotFoundError

__all__ = [
    "HcsociError",
    "NotFoundError",
    "ProcessParameters",
    "context",
]
