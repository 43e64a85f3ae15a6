"""The QMP session against a monitor that sends an event before its greeting.

QEMU does this when an event races a client's connect (seen here: a
``MIGRATION`` event while a VM loads its template).  The race cannot be made
to happen on demand with a real QEMU, so a monitor on a unix socket plays
QEMU's part: an event first on the first connection, a proper greeting on the
next.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from hcsoci.uvm.qmp import QMPSession

_VERSION = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}
_GREETING: dict[str, object] = {"QMP": {"version": _VERSION, "capabilities": []}}
_EVENT: dict[str, object] = {
    "timestamp": {"seconds": 1, "microseconds": 0},
    "event": "MIGRATION",
    "data": {"status": "setup"},
}


def _send(conn: socket.socket, message: dict[str, object]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\r\n")


def _requests(conn: socket.socket) -> Iterator[dict[str, object]]:
    """Each JSON object the client sends (as QEMU reads them: no newline needed)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while data := conn.recv(4096):
        buffer += data.decode()
        while buffer.strip():
            try:
                request, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break  # the rest of the object is still on its way
            buffer = buffer.lstrip()[end:]
            yield request


def _serve(listener: socket.socket, accepted: list[int]) -> None:
    """The first connection gets an event where the greeting belongs; the next, QEMU's."""
    for number in range(2):
        conn, _ = listener.accept()
        accepted.append(number)
        with conn:
            _send(conn, _EVENT if number == 0 else _GREETING)
            for request in _requests(conn):
                answer: dict[str, object] = {"return": {}}
                if request.get("execute") == "query-status":
                    answer = {"return": {"status": "paused", "running": False}}
                if "id" in request:
                    answer["id"] = request["id"]
                _send(conn, answer)


def test_an_event_before_the_greeting_is_connected_anew(tmp_path: Path) -> None:
    path = str(tmp_path / "qmp.sock")
    accepted: list[int] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        server = threading.Thread(target=_serve, args=(listener, accepted), daemon=True)
        server.start()
        session = QMPSession("raced")
        try:
            session.connect(path, timeout=10.0)
            assert session.execute("query-status")["status"] == "paused"
        finally:
            session.close()
        server.join(10.0)
    assert accepted == [0, 1]
