"""The guest agent (GCS) of the utility VM and the bridge the host speaks to it.

:mod:`hcsoci.gcs.agent` runs inside the guest; :mod:`hcsoci.gcs.protocol` is the
framing both sides share (standard library only); :mod:`hcsoci.gcs.connection`
is the host side.
"""

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
