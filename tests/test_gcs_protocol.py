"""The bridge framing, without a VM."""

from __future__ import annotations

import pytest

from hcsoci.gcs import protocol


def test_message_frame_round_trips() -> None:
    frame = protocol.message_frame(protocol.REQUEST, 7, {"op": "ping", "n": [1, 2]})
    frame_type, frame_id, length = protocol.parse_header(frame)
    assert (frame_type, frame_id) == (protocol.REQUEST, 7)
    assert length == len(frame) - protocol.HEADER_SIZE
    assert protocol.parse_message(frame[protocol.HEADER_SIZE :]) == {"op": "ping", "n": [1, 2]}


def test_stream_ids_and_credit() -> None:
    stream = protocol.stream_id(12345, protocol.STDERR)
    assert protocol.split_stream_id(stream) == (12345, protocol.STDERR)
    frame = protocol.window_frame(stream, 65536)
    assert protocol.parse_header(frame) == (protocol.WINDOW, stream, 4)
    assert protocol.parse_credit(frame[protocol.HEADER_SIZE :]) == 65536
    assert protocol.parse_header(protocol.eof_frame(stream)) == (protocol.EOF, stream, 0)


def test_bad_frames_are_protocol_errors() -> None:
    with pytest.raises(protocol.ProtocolError, match="unknown frame type"):
        protocol.parse_header(protocol.HEADER.pack(99, 0, 0, 1, 0))
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.parse_header(protocol.header(protocol.DATA, 1, protocol.MAX_DATA_FRAME + 1))
    with pytest.raises(protocol.ProtocolError, match="not an object"):
        protocol.parse_message(b"[1]")
    with pytest.raises(protocol.ProtocolError, match="bad message"):
        protocol.parse_message(b"{")
    with pytest.raises(protocol.ProtocolError, match="WINDOW"):
        protocol.parse_credit(b"\0")


def test_agent_imports_only_the_standard_library() -> None:
    import subprocess
    import sys

    from hcsoci.uvm.assets import agent_path

    files = subprocess.run(
        [sys.executable, "-S", "-I", str(agent_path()), "--list-imported-files"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    gcs_dir = str(agent_path().parent)
    ours = sorted({f for f in files if "hcsoci" in f and not f.startswith(gcs_dir)})
    assert ours == []
    assert not any("msgspec" in f or "site-packages" in f for f in files)
