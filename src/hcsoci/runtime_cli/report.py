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

__all__ = ["LogTarget", "report_error"]


class LogTarget:
    """Where runc's ``--log`` and ``--log-format`` say records go ('' = stderr only)."""

    __slots__ = ("format", "path")

    def __init__(self, path: str = "", format: str = "text") -> None:
        self.path = path
        self.format = format


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def _record(message: str, format: str) -> str:
    import json  # only on the way out with an error

    if format == "json":
        return json.dumps(
            {"level": "error", "msg": message, "time": _timestamp()}, separators=(",", ":")
        )
    return f"time={json.dumps(_timestamp())} level=error msg={json.dumps(message)}"


def report_error(message: str, target: LogTarget) -> None:
    """Write ``message`` (made one line) to stderr and as an error record to the log."""
    line = " ".join(message.split()) or "unknown error"
    if target.path:
        try:
            fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            pass  # the directory is gone: stderr still says it
        else:
            with os.fdopen(fd, "a") as log:
                log.write(_record(line, target.format) + "\n")
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
