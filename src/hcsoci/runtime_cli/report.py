"""Errors as runc reports them: one line on stderr, and a record in ``--log``.

runc's ``fatal`` writes the error to its log (logrus: JSON with
``--log-format json``, else ``time="..." level=error msg="..."``) and the bare
message to stderr, then exits 1.  containerd's shim reads the last ``error``
record of the JSON log; podman and conmon show stderr.  hcsoci-runc does the
same for every error of its own; runc's errors reach both places from runc.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["LogTarget", "report_error", "report_warning"]


class LogTarget:
    """Where runc's ``--log`` and ``--log-format`` say records go ('' = stderr only)."""

    __slots__ = ("format", "path")

    def __init__(self, path: str = "", format: str = "text") -> None:
        self.path = path
        self.format = format


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def _record(message: str, format: str, level: str = "error") -> str:
    import json  # only on the way out with an error

    if format == "json":
        return json.dumps(
            {"level": level, "msg": message, "time": _timestamp()}, separators=(",", ":")
        )
    return f"time={json.dumps(_timestamp())} level={level} msg={json.dumps(message)}"


def _append(path: str, record: str) -> bool:
    """Append ``record`` to the log at ``path``; False when it cannot be opened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    with os.fdopen(fd, "a") as log:
        log.write(record + "\n")
    return True


def report_error(message: str, target: LogTarget) -> None:
    """Write ``message`` (made one line) to stderr and as an error record to the log."""
    line = " ".join(message.split()) or "unknown error"
    if target.path:
        _append(target.path, _record(line, target.format))  # a log gone: stderr still says it
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report_warning(message: str, target: LogTarget) -> None:
    """A warning record in the log, as runc's logrus writes it; on stderr without a log."""
    line = " ".join(message.split())
    if target.path and _append(target.path, _record(line, target.format, "warning")):
        return
    sys.stderr.write(f"warning: {line}\n")
    sys.stderr.flush()
