"""What runc's ``--debug`` JSON log says of a process's exit: one reader for host and guest.

runc logs ``process exited`` with the pid and the status (``128 + N`` for a
signal N) the moment it reaps its container process, before it waits for the
process's output to end.  Both the host (``hcsoci.runtime.runc``) and the guest
agent read it there, so a background child holding stdout cannot delay the
status.  Standard library only: it is shipped into the guest beside the agent.
"""

from __future__ import annotations

__all__ = ["logged_exit_status"]


def logged_exit_status(log_file: str, pid: int) -> int | None:
    """The status the log ``log_file`` gives for ``pid``; None when not (yet) logged."""
    import json  # here, not at import: the guest agent starts without it

    try:
        with open(log_file, errors="replace") as runc_log:
            lines = [line for line in runc_log if '"process exited"' in line]
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("pid") == pid:
            status = record.get("status")
            if isinstance(status, int):
                return status
    return None
