"""A container in a utility VM (``cow.Container``) and its processes, run by the guest's runc.

:mod:`hcsoci.uvm.placement` makes it (``create_container`` with a
``hosting_system``); the rules of its lifecycle are
:class:`~hcsoci.lifecycle.ContainerLifecycle`'s, shared with host containers.
Every process is a ``runc`` in the guest, reached through the bridge
(:class:`~hcsoci.gcs.connection.GuestProcess`).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import msgspec

from hcsoci import oci
from hcsoci.container import ContainerProperties
from hcsoci.context import Context
from hcsoci.cow import ProcessParameters, Stdio, StdioFds
from hcsoci.errors import HcsociError, StateError
from hcsoci.gcs.connection import GuestError, GuestProcess
from hcsoci.lifecycle import ContainerLifecycle, Pipes
from hcsoci.store import Store
from hcsoci.uvm.vm import UtilityVM

__all__ = ["VMContainer", "VMContainerProcess"]


class VMContainerProcess:
    """A process of a container in a utility VM (``cow.Process``): a ``runc`` in the guest."""

    def __init__(self, container: VMContainer, guest: GuestProcess) -> None:
        self._container = container
        self._guest = guest

    def __repr__(self) -> str:
        return f"<VMContainerProcess {self._container.id()} {self._guest!r}>"

    def pid(self) -> int:
        """The pid of the process's ``runc`` in the guest."""
        return self._guest.pid()

    def stdio(self) -> Stdio:
        return self._guest.stdio()

    def close_stdin(self, ctx: Context) -> None:
        self._guest.close_stdin(ctx)

    def resize_console(self, ctx: Context, width: int, height: int) -> None:
        self._guest.resize_console(ctx, width, height)

    def signal(self, ctx: Context, sig: int) -> bool:
        """Send ``sig``: runc forwards it; SIGKILL goes to the container process itself."""
        return self._guest.signal(ctx, sig)

    def kill(self, ctx: Context) -> bool:
        return self.signal(ctx, signal.SIGKILL)

    def wait(self) -> None:
        self._guest.wait()

    def exit_code(self) -> int:
        return self._guest.exit_code()

    def running(self) -> bool:
        """Whether the process still runs (no exit status or failure seen yet)."""
        return self._guest.running()

    def close(self) -> None:
        self._guest.close()


class VMContainer(ContainerLifecycle[VMContainerProcess]):
    """A container in a utility VM (``cow.Container``), run by the guest's runc.

    The rules of the lifecycle are :class:`~hcsoci.lifecycle.ContainerLifecycle`'s.
    """

    def __init__(
        self,
        container_id: str,
        vm: UtilityVM,
        root: str,
        spec: oci.Spec,
        store: Store,
        *,
        owner: str = "",
    ) -> None:
        super().__init__(container_id, spec, store, owner=owner, state="created")
        self.vm = vm
        self.root = root

    def __repr__(self) -> str:
        return f"<VMContainer {self._id} in {self.vm.id()} {self._state.name}>"

    @property
    def log_path(self) -> str:
        """Where ``start`` sends the init's output (a guest path)."""
        return f"{self.root}/container.log"

    def wait(self) -> None:
        """Block until the init has exited."""
        init = self._init
        if init is None:
            raise StateError(f"container {self._id}: not started")
        init.wait()

    def properties(self, ctx: Context) -> ContainerProperties:
        """State, the guest pid of the init, its processes and its cgroup's figures."""
        state = self.state_type().name
        props = ContainerProperties(
            id=self._id, owner=self.owner, state=state, init_pid=0, bundle=self.root, runtime="runc"
        )
        init = self._init
        if init is not None and state == "stopped":
            with contextlib.suppress(HcsociError):
                props.exit_code = init.exit_code()
        if state == "running":
            with contextlib.suppress(HcsociError):
                guest_state = self.vm.gcs.container_state(ctx, self._id)
                props.init_pid = guest_state.pid
                props.processes = guest_state.processes
                props.memory_usage_bytes = guest_state.memory_usage_bytes
                props.cpu_usage_ns = guest_state.cpu_usage_ns
        return props

    def _check_running(self, action: str) -> None:
        state = self.state_type().name
        if state not in ("running", "paused"):
            raise StateError(f"container {self._id}: cannot {action} a container that is {state}")

    def pause(self, ctx: Context) -> None:
        """Freeze every process of the container (``runc pause`` in the guest)."""
        self._check_running("pause")
        self.vm.gcs.pause_container(ctx, self._id)

    def resume(self, ctx: Context) -> None:
        """Thaw the processes :meth:`pause` froze (``runc resume`` in the guest)."""
        self._check_running("resume")
        self.vm.gcs.resume_container(ctx, self._id)

    def update(
        self, ctx: Context, flags: list[str], resources: dict[str, Any] | None = None
    ) -> None:
        """Change the container's resource limits (``runc update`` in the guest).

        ``flags`` are runc's ``--name=value`` tokens, ``resources`` an OCI
        LinuxResources object as JSON builtins (see
        :meth:`~hcsoci.gcs.connection.GuestConnection.update_container`).
        """
        self._check_running("update")
        self.vm.gcs.update_container(ctx, self._id, flags, resources)

    # -- what the lifecycle asks of this host --

    def _observed_state(self) -> str:
        init = self._init
        return "running" if init is not None and init.running() else "stopped"

    def _close_handles(self) -> None:
        init = self._init
        if init is not None:
            init.close()

    def _signal_running_init(self, ctx: Context, sig: int) -> None:
        self.vm.gcs.signal_container(ctx, self._id, sig)

    @staticmethod
    def _stdio(pipes: Pipes, terminal: bool, size: oci.Box | None) -> ProcessParameters:
        """The stdio part of a process's parameters (its command comes from the spec)."""
        return ProcessParameters(
            command_args=["runc"],
            emulate_console=terminal,
            console_size=(size.height, size.width) if terminal and size is not None else (0, 0),
            create_stdin_pipe=pipes[0],
            create_stdout_pipe=pipes[1],
            create_stderr_pipe=pipes[2],
        )

    def _launch_init(
        self, ctx: Context, pipes: Pipes, fds: StdioFds, to_log: bool
    ) -> tuple[VMContainerProcess, int]:
        assert self.spec.process is not None
        try:
            guest = self.vm.gcs.start_container(
                ctx,
                self._id,
                self._stdio(
                    pipes, bool(self.spec.process.terminal), self.spec.process.console_size
                ),
                output_file=self.log_path if to_log else "",
                timeout=self.vm.options.request_timeout,
            )
        except GuestError as err:
            raise HcsociError(
                f"container {self._id}: runc did not start the process: {err}"
            ) from err
        process = VMContainerProcess(self, guest)
        return process, process.pid()

    def _launch_exec(
        self, ctx: Context, process: oci.Process, pipes: Pipes, fds: StdioFds
    ) -> VMContainerProcess:
        # Offered descriptors are declined: the process runs in the guest (see hcsoci.cow).
        guest = self.vm.gcs.exec_in_container(
            ctx,
            self._id,
            msgspec.to_builtins(process),
            self._stdio(pipes, bool(process.terminal), process.console_size),
        )
        return VMContainerProcess(self, guest)
