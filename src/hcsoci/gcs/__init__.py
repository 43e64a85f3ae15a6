"""The guest agent (GCS) of the utility VM and the bridge the host speaks to it.

:mod:`hcsoci.gcs.agent` runs inside the guest; :mod:`hcsoci.gcs.protocol` is the
framing both sides share (standard library only); :mod:`hcsoci.gcs.connection`
is the host side; :mod:`hcsoci.gcs.users` the user rule both sides apply.  The
host side is imported on first use, so that a module needing only the shared
pieces (``LocalHost`` needs the user rule) does not pay for the bridge.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hcsoci.gcs.connection import (
        BridgeClosedError,
        GuestConnection,
        GuestError,
        GuestNotFoundError,
        GuestProcess,
        GuestTimeoutError,
    )

__all__ = [
    "BridgeClosedError",
    "GuestConnection",
    "GuestError",
    "GuestNotFoundError",
    "GuestProcess",
    "GuestTimeoutError",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hcsoci.gcs import connection

        return getattr(connection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
