"""The bridge protocol between the host and the guest agent (GCS).

Both ends speak it over one virtio-serial port, so this module is loaded by
the guest agent too: it uses only ``struct`` and ``json`` from the standard
library and imports nothing from hcsoci.

Every frame is a 12-byte header followed by ``length`` payload bytes::

    u8 type | u8 flags | u16 reserved | u32 id | u32 length   (little endian)

``id`` is a request id for ``REQUEST``/``RESPONSE``, and a stream id for the
stream frames.  A stream id is ``process_key << 2 | fd`` (fd 0, 1 or 2): the
host picks the process key before it asks for the process, so stream frames
can never arrive for a process the host does not know yet.

Message frames (``HELLO``, ``REQUEST``, ``RESPONSE``, ``NOTIFY``) carry one
JSON object.  Stream frames carry raw bytes (``DATA``), a little-endian u32
credit (``WINDOW``) or nothing (``EOF``).

Flow control: a sender may have at most ``window`` bytes of a stream in
flight; the receiver returns credit with ``WINDOW`` frames as its reader
consumes data.  A slow reader therefore stops only its own stream, never the
bridge.
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False  # the agent imports this module: typing costs time there
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSIONS = (1, 2, 3)
"""Versions this build speaks, oldest first; the host picks the newest both know.

Version 2 added the container requests (``create_container``,
``start_container``, ``exec_in_container``, ``signal_container``,
``signal_container_process``, ``container_state``, ``delete_container``) and
the ``container_exit`` notification.  Version 3: ``create_container`` also
writes ``files`` (``[guest path, text]`` pairs inside the bundle), and
``pause_container``, ``resume_container`` and ``update_container`` (the
guest's ``runc pause``, ``resume`` and ``update``) were added.
"""

CONTAINER_VERSION = 2
"""The first version with the container requests."""

FILES_VERSION = 3
"""The first version whose ``create_container`` writes the bundle's ``files``."""

CONTAINER_CONTROL_VERSION = 3
"""The first version with pause, resume and update of a container."""

PORT_NAME = "hcsoci.gcs"
"""The virtio-serial port name the agent looks for under /sys/class/virtio-ports."""

HELLO = 1
"""Guest to host, once the agent is up: ``{"versions": [...], "pid": N}``."""
REQUEST = 2
"""Host to guest: ``{"op": name, ...arguments}``; answered by one RESPONSE."""
RESPONSE = 3
"""Guest to host: ``{"result": {...}}``, or ``{"error": {"type", "message", "errno"}}``."""
NOTIFY = 4
"""Guest to host, unsolicited: ``{"event": "exit", "key": K, "status": N}``, and
(version 2) ``{"event": "container_exit", "id": ID, "key": K, "status": N}`` after
the exit of a container's init."""
DATA = 5
"""Stream bytes."""
WINDOW = 6
"""Stream credit: the receiver consumed this many more bytes."""
EOF = 7
"""The stream is closed by its sender (stdin closed, or the pipe reached EOF)."""

HEADER = struct.Struct("<BBHII")
HEADER_SIZE = HEADER.size

MAX_DATA_FRAME = 1024 * 1024
"""Largest DATA payload: big frames keep per-byte Python work off the hot path."""
MAX_MESSAGE_FRAME = 16 * 1024 * 1024
"""Largest JSON payload either side accepts."""
DEFAULT_WINDOW = 4 * 1024 * 1024
"""Initial credit of every stream."""

CREDIT = struct.Struct("<I")

STDIN, STDOUT, STDERR = 0, 1, 2


class ProtocolError(Exception):
    """The peer sent something this end cannot parse."""


def stream_id(process_key: int, fd: int) -> int:
    """The stream id of a process's stdin (0), stdout (1) or stderr (2)."""
    return process_key << 2 | fd


def split_stream_id(stream: int) -> tuple[int, int]:
    """The (process key, fd) of a stream id."""
    return stream >> 2, stream & 3


def header(frame_type: int, frame_id: int, length: int) -> bytes:
    """Pack a frame header."""
    return HEADER.pack(frame_type, 0, 0, frame_id, length)


def message_frame(frame_type: int, frame_id: int, body: dict[str, Any]) -> bytes:
    """A whole JSON message frame."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    if len(payload) > MAX_MESSAGE_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_FRAME}")
    return HEADER.pack(frame_type, 0, 0, frame_id, len(payload)) + payload


def window_frame(stream: int, credit: int) -> bytes:
    """A WINDOW frame returning ``credit`` bytes of a stream."""
    return HEADER.pack(WINDOW, 0, 0, stream, CREDIT.size) + CREDIT.pack(credit)


def eof_frame(stream: int) -> bytes:
    """An EOF frame for a stream."""
    return HEADER.pack(EOF, 0, 0, stream, 0)


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """(type, id, length) of the frame header at ``offset``; ProtocolError for a bad one."""
    frame_type, _flags, _reserved, frame_id, length = HEADER.unpack_from(data, offset)
    if not HELLO <= frame_type <= EOF:
        raise ProtocolError(f"unknown frame type {frame_type}")
    limit = MAX_DATA_FRAME if frame_type == DATA else MAX_MESSAGE_FRAME
    if length > limit:
        raise ProtocolError(f"frame type {frame_type} of {length} bytes exceeds {limit}")
    return frame_type, frame_id, length


def parse_message(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a JSON message payload; it must be an object."""
    try:
        body = json.loads(bytes(payload))
    except ValueError as err:
        raise ProtocolError(f"bad message payload: {err}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"message payload is {type(body).__name__}, not an object")
    return body


def parse_credit(payload: bytes | bytearray | memoryview) -> int:
    """The credit carried by a WINDOW frame."""
    if len(payload) != CREDIT.size:
        raise ProtocolError(f"WINDOW payload of {len(payload)} bytes")
    return int(CREDIT.unpack(payload)[0])
