"""The init/exec lifecycle every container shares, on this machine or in a utility VM.

A container is ``created`` (its init not run yet), ``starting`` (the init is
being launched), ``running`` or ``stopped`` -- one small type per state, as in
containerd's ``pkg/process``: each state says which operations it allows, and
refuses the others with a :class:`~hcsoci.errors.StateError` that names it.
:class:`ContainerLifecycle` holds the rules once:

* the init starts once, from ``created`` only: ``start(ctx)`` with its output
  in the container's log, or ``create_process(ctx, None)`` with relayed stdio
  (a terminal init only the latter way);
* an extra process (``create_process(ctx, oci.Process)``) needs ``running``;
* ``shutdown`` / ``terminate`` signal a running init (TERM / KILL);
* a failed launch leaves the container ``created``, as if never tried;
* ``with container:`` terminates a running init and closes the handle on exit.

A host subclass says only how to launch, signal, wait and observe: the runc
container (:class:`hcsoci.container.Container`) and the container in a utility
VM (:class:`hcsoci.uvm.container.VMContainer`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

from hcsoci import container_table, oci
from hcsoci.context import Context, background
from hcsoci.cow import NO_FDS, OCIProcessParameters, StdioFds
from hcsoci.errors import InvalidArgumentError, StateError
from hcsoci.store import Store

__all__ = [
    "STATES",
    "ContainerLifecycle",
    "ContainerState",
    "Created",
    "Pipes",
    "Running",
    "Starting",
    "Stopped",
    "split_process_config",
]

Pipes = tuple[bool, bool, bool]
"""Which of stdin, stdout, stderr to create a pipe for."""

P = TypeVar("P")


class ContainerState:
    """One state of a container's init.  The base refuses everything."""

    name: ClassVar[str] = ""

    def refuse(self, container_id: str, action: str) -> StateError:
        return StateError(f"container {container_id}: cannot {action} (state {self.name})")

    def check_start(self, container_id: str) -> None:
        """Raise unless the init may be started now."""
        raise self.refuse(container_id, "start the init: it has started already")

    def check_exec(self, container_id: str) -> None:
        """Raise unless an extra process may run now."""
        raise self.refuse(container_id, "run a process in it")

    def check_signal(self, container_id: str) -> None:
        """Raise unless the init may be signalled now."""
        raise self.refuse(container_id, "signal the init: it is not running")


class Created(ContainerState):
    """Made, its init not run yet: only the init may start."""

    name = "created"

    def check_start(self, container_id: str) -> None:
        return None

    def check_signal(self, container_id: str) -> None:
        raise self.refuse(container_id, "signal the init: not started")


class Starting(ContainerState):
    """The init is being launched (by another thread)."""

    name = "starting"


class Running(ContainerState):
    """The init runs: extra processes and signals are allowed."""

    name = "running"

    def check_exec(self, container_id: str) -> None:
        return None

    def check_signal(self, container_id: str) -> None:
        return None


class Stopped(ContainerState):
    """The init has exited: nothing runs any more."""

    name = "stopped"


STATES: dict[str, ContainerState] = {
    state.name: state for state in (Created(), Starting(), Running(), Stopped())
}
"""Each state by name; ``paused`` (a runtime's word) behaves as ``running``."""
STATES["paused"] = STATES["running"]


def split_process_config(config: Any) -> tuple[oci.Process | None, Pipes, StdioFds]:
    """Split a container's ``create_process`` config into (OCI process, pipes, offered fds).

    ``None`` or an ``oci.Process`` get every pipe (stderr folded into a
    terminal); an :class:`~hcsoci.cow.OCIProcessParameters` says which.
    """
    if config is None or isinstance(config, oci.Process):
        terminal = config is not None and config.terminal
        return config, (True, True, not terminal), NO_FDS
    if isinstance(config, OCIProcessParameters):
        process = config.process
        if process is not None and not isinstance(process, oci.Process):
            raise InvalidArgumentError(f"process: {process!r} is not an oci.Process")
        pipes = (
            bool(config.create_stdin_pipe),
            bool(config.create_stdout_pipe),
            bool(config.create_stderr_pipe),
        )
        return process, pipes, config.stdio_fds
    raise InvalidArgumentError(
        f"config: a container takes an oci.Process or None, not {type(config).__name__}"
    )


class ContainerLifecycle(ABC, Generic[P]):
    """The ``cow.Container`` rules every host shares; ``P`` is the host's process type.

    Subclasses implement :meth:`_launch_init`, :meth:`_launch_exec`,
    :meth:`_signal_running_init`, :meth:`_observed_state` and :meth:`_close_handles`.
    """

    def __init__(
        self, container_id: str, spec: oci.Spec, store: Store, *, owner: str, state: str
    ) -> None:
        self._id = container_id
        self.spec = spec
        self.owner = owner
        self._store = store
        self._state: ContainerState = STATES[state]
        self._init: P | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- cow.ProcessHost --

    def id(self) -> str:
        """The container's id."""
        return self._id

    def os(self) -> str:
        """``linux``."""
        return "linux"

    def is_oci(self) -> bool:
        """True: ``create_process`` takes an ``oci.Process`` (or None for the init)."""
        return True

    def create_process(self, ctx: Context, config: Any) -> P:
        """Run a process in the container.

        ``None`` (or a wrapper whose ``process`` is None) starts the spec's init
        with the requested pipes; it is refused once the init has started.  An
        ``oci.Process`` runs an extra process in the running container, with
        pipes or, when ``terminal`` is set, a terminal.
        """
        ctx.check()
        process, pipes, fds = split_process_config(config)
        if process is None:
            return self._start_init(ctx, pipes, fds, to_log=False)
        self.state_type().check_exec(self._id)
        return self._launch_exec(ctx, process, pipes, fds)

    # -- cow.Container --

    def start(self, ctx: Context) -> None:
        """Run the spec's process as the container's init; its output goes to the log."""
        ctx.check()
        self._start_init(ctx, (False, False, False), NO_FDS, to_log=True)

    def shutdown(self, ctx: Context) -> None:
        """SIGTERM to the init (which ignores it without a handler, as any pid namespace init)."""
        self._signal_init(ctx, signal.SIGTERM)

    def terminate(self, ctx: Context) -> None:
        """SIGKILL to the init: the container stops."""
        self._signal_init(ctx, signal.SIGKILL)

    def close(self) -> None:
        """Release this handle's descriptors.  The container keeps running."""
        self._closed = True
        self._close_handles()

    def state_type(self) -> ContainerState:
        """The current state, as one of :data:`STATES`."""
        with self._lock:
            if self._state.name in ("created", "starting"):
                return self._state
        return STATES.get(self._observed_state(), STATES["stopped"])

    # -- context manager: `with` cannot forget to stop and close --

    def __enter__(self) -> ContainerLifecycle[P]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Kill a running init, wait for it, and close the handle."""
        try:
            if self.state_type().name == "running":
                with contextlib.suppress(StateError):
                    self.terminate(background())
                    self.wait()
        finally:
            self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_init", None) is not None:
            warnings.warn(
                f"container {self._id}: handle dropped without close() while it held its "
                "init's descriptors",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    # -- the shared rules --

    def _start_init(self, ctx: Context, pipes: Pipes, fds: StdioFds, *, to_log: bool) -> P:
        with self._lock:
            self._state.check_start(self._id)
            self._state = STATES["starting"]
        assert self.spec.process is not None
        try:
            if to_log and self.spec.process.terminal:
                raise StateError(
                    f"container {self._id}: spec.process.terminal is set; start a terminal init "
                    "with a Cmd (create_process(ctx, None)), start() only writes a log file"
                )
            process, pid = self._launch_init(ctx, pipes, fds, to_log)
        except BaseException:
            with self._lock:
                self._state = STATES["created"]
            raise
        with self._lock:
            self._init = process
            self._state = STATES["running"]
        container_table.set_state(self._store, self._id, "running", pid)
        return process

    def _signal_init(self, ctx: Context, sig: int) -> None:
        self.state_type().check_signal(self._id)
        self._signal_running_init(ctx, sig)

    def _mark_stopped(self) -> bool:
        """Record that the init exited; False when that was known already."""
        with self._lock:
            if self._state.name == "stopped":
                return False
            self._state = STATES["stopped"]
        with contextlib.suppress(Exception):  # a released container has no row left
            container_table.set_state(self._store, self._id, "stopped")
        return True

    # -- what each host does --

    @abstractmethod
    def wait(self) -> None:
        """Block until the init has exited (``cow.Container.wait``)."""

    @abstractmethod
    def _launch_init(
        self, ctx: Context, pipes: Pipes, fds: StdioFds, to_log: bool
    ) -> tuple[P, int]:
        """Start the init; return its process and the pid to record."""

    @abstractmethod
    def _launch_exec(self, ctx: Context, process: oci.Process, pipes: Pipes, fds: StdioFds) -> P:
        """Run an extra process in the running container."""

    @abstractmethod
    def _signal_running_init(self, ctx: Context, sig: int) -> None:
        """Deliver ``sig`` to the running init."""

    @abstractmethod
    def _observed_state(self) -> str:
        """``running``, ``paused`` or ``stopped``, as the host sees it now (after start)."""

    @abstractmethod
    def _close_handles(self) -> None:
        """Close what this handle holds of its processes."""
