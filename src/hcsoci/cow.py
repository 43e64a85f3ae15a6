"""The small interfaces every process host implements (hcsshim's ``cow`` package).

A :class:`ProcessHost` makes :class:`Process` objects: this machine
(:class:`hcsoci.LocalHost`), a container, or a utility VM.  A
:class:`Container` is a process host with a lifecycle.  Non-OCI hosts take
:class:`ProcessParameters`; OCI hosts take :class:`hcsoci.oci.Process` (or
``None`` for a container's initial process).

Handing a descriptor over
=========================

Both parameter types carry ``stdio_fds``: descriptors of the caller's, one per
stream (stdin, stdout, stderr) or None, that a host running the process *on
this machine* may give the process as they are, instead of a pipe the caller
would have to relay (``subprocess`` and Go's ``os/exec`` do the same with a
file).  The host duplicates each one it takes into the process; the caller
keeps its own and closes it when it likes.  A host is free to decline any of
them (a remote host declines all, having no access to this machine's
descriptors): it then makes the pipe ``create_*_pipe`` asks for, as if no
descriptor had been offered.  ``Process.stdio()`` tells which happened: None
for a stream offered and taken, the pipe for one declined.  So a caller offers
a descriptor together with ``create_*_pipe=True``.  A process with a terminal
never takes one (its stdio is the terminal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

from hcsoci.context import Context

if TYPE_CHECKING:
    from hcsoci.oci import Process as OCIProcess

__all__ = [
    "NO_FDS",
    "Container",
    "OCIProcessParameters",
    "Process",
    "ProcessHost",
    "ProcessParameters",
    "Stdio",
    "StdioFds",
]

# (stdin, stdout, stderr): each a binary file object, or None when no pipe was asked for.
Stdio = tuple["IO[bytes] | None", "IO[bytes] | None", "IO[bytes] | None"]

StdioFds = tuple[int | None, int | None, int | None]
"""(stdin, stdout, stderr) descriptors offered to a host, each or None (see above)."""

NO_FDS: StdioFds = (None, None, None)


@runtime_checkable
class Process(Protocol):
    """A process running in some host."""

    def close(self) -> None:
        """Release the process's handles and stdio.  The process keeps running."""

    def close_stdin(self, ctx: Context) -> None:
        """Close the process's stdin, so it reads EOF."""

    def pid(self) -> int:
        """The process id, as the host that runs it sees it."""

    def stdio(self) -> Stdio:
        """The process's (stdin, stdout, stderr) pipes; None for a stream not created."""

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        """Resize the process's terminal (raises if it has none)."""

    def kill(self, ctx: Context) -> bool:
        """Send SIGKILL.  True when it was delivered, False when the process was gone."""

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig``.  True when it was delivered, False when the process was gone."""

    def wait(self) -> None:
        """Block until the process has exited."""

    def exit_code(self) -> int:
        """The exit code (``128 + N`` for a signal N).  Raises while still running."""


@runtime_checkable
class ProcessHost(Protocol):
    """Anything that can run processes."""

    def create_process(self, ctx: Context, config: Any) -> Process:
        """Start a process; ``config`` is ProcessParameters or an ``oci.Process`` (or None)."""

    def os(self) -> str:
        """The host's operating system: ``"linux"``."""

    def is_oci(self) -> bool:
        """Whether ``create_process`` takes an OCI process spec."""


@runtime_checkable
class Container(ProcessHost, Protocol):
    """A process host with a lifecycle: a container, on this machine or in a VM."""

    def id(self) -> str:
        """The container's id."""

    def start(self, ctx: Context) -> None:
        """Start the container's initial process."""

    def shutdown(self, ctx: Context) -> None:
        """Ask the container to stop (SIGTERM to its init)."""

    def terminate(self, ctx: Context) -> None:
        """Stop the container now (SIGKILL to its init)."""

    def wait(self) -> None:
        """Block until the container's init has exited."""

    def close(self) -> None:
        """Release this handle's resources (not the container's)."""

    def properties(self, ctx: Context) -> Any:
        """The container's state, processes and resource figures."""


@dataclass
class ProcessParameters:
    """What a non-OCI host needs to start a process (hcsshim's ``ProcessParameters``).

    ``user`` is a name or ``uid[:gid]``; empty means the caller's own.
    ``console_size`` is (height, width), as in the OCI ``consoleSize`` box.
    """

    command_args: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    working_directory: str = ""
    user: str = ""
    emulate_console: bool = False
    console_size: tuple[int, int] = (0, 0)
    create_stdin_pipe: bool = False
    create_stdout_pipe: bool = False
    create_stderr_pipe: bool = False
    stdio_fds: StdioFds = NO_FDS
    """Descriptors to use as the process's stdio as they are (see the module docs)."""


@dataclass
class OCIProcessParameters:
    """What an OCI host's ``create_process`` takes from a ``Cmd`` (lcow's ``ProcessParameters``).

    ``process`` is None for a created container's initial process.  Only the
    pipes asked for are made; the others read from or write to ``/dev/null``.
    """

    process: OCIProcess | None = None
    create_stdin_pipe: bool = False
    create_stdout_pipe: bool = False
    create_stderr_pipe: bool = False
    stdio_fds: StdioFds = NO_FDS
    """Descriptors to use as the process's stdio as they are (see the module docs)."""
