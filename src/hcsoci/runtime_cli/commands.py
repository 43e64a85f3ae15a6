"""Each runc command, as hcsoci-runc carries it out (process isolation).

Every command checks the container id with :func:`hcsoci.ids.check_id` (the
rule :mod:`hcsoci.paths` applies).  ``create``, ``run`` and ``delete`` change
what hcsoci records, and live in :mod:`hcsoci.runtime_cli.containers`; the
rest *become* runc once their input is checked.  Only this module, the flag
parser and the runc launcher are imported on the way to ``start``, ``kill``,
``exec``, ``state``, ``ps`` and a ``delete`` of a container already gone.
"""

from __future__ import annotations

import os
import sys

from hcsoci.ids import check_id
from hcsoci.runtime_cli import markers
from hcsoci.runtime_cli.annotations import may_name_isolation, may_name_pod_role
from hcsoci.runtime_cli.argv import CommandLine, UsageError
from hcsoci.runtime_cli.report import LogTarget
from hcsoci.runtime_cli.runc import RuncCommand

TYPE_CHECKING = False  # collections.abc and typing cost milliseconds at every engine call
if TYPE_CHECKING:
    from collections.abc import Callable

    Handler = Callable[["Invocation", CommandLine], int]

__all__ = [
    "COMMANDS",
    "CommandError",
    "Invocation",
    "check_parent",
    "container_id",
    "is_vm_container",
    "run_command",
]


class CommandError(Exception):
    """The command failed for a reason of hcsoci-runc's own; the message is one line."""


VM_DIRECTORY = "hcsoci-runc-vm"
"""Under the state root: a directory per VM container (see :mod:`hcsoci.runtime_cli.vm`)."""


def is_vm_container(root: str, wanted: str) -> bool:
    """Whether the (checked) id names a VM container (one ``stat``: this is the fast path)."""
    return os.path.isdir(os.path.join(root, VM_DIRECTORY, wanted))


class Invocation:
    """One call of the runtime: hcsoci's state root, runc, and the chosen isolation."""

    def __init__(
        self, root: str, runc: RuncCommand, isolation: str, log: LogTarget | None = None
    ) -> None:
        self.root = root
        """hcsoci's state root for this call (``--root``)."""
        self.runc_root = os.path.join(root, "runc")
        """runc's own root under it."""
        self.runc = runc
        self.isolation = isolation
        """'process', or '' when neither flag nor name chose (the annotation decides)."""
        self.log = log or LogTarget()
        """Where ``--log`` sends records (a warning of our own goes there)."""

    def held_by_runc(self, container_id: str) -> bool:
        """Whether runc holds state for the (checked) id."""
        return os.path.isdir(os.path.join(self.runc_root, container_id))


def container_id(line: CommandLine, command: str) -> str:
    """The command's container id argument, checked."""
    if not line.args:
        raise UsageError(f'"{command}" requires a container id')
    return check_id(line.args[0], "container id")


def check_parent(path: str, field: str) -> None:
    """Refuse a file to be written (a pid file) whose directory does not exist."""
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise CommandError(f"{field} {path!r}: directory {directory!r} does not exist")


def _vm_command(invocation: Invocation, command: str, line: CommandLine) -> bool:
    """Whether ``command`` names a VM container (then :mod:`~hcsoci.runtime_cli.vm` does it)."""
    return bool(line.args) and is_vm_container(invocation.root, container_id(line, command))


def _exec(invocation: Invocation, line: CommandLine) -> int:
    container_id(line, "exec")
    check_parent(line.value("pid-file"), "pid file")
    process = line.value("process")
    if process and not os.path.isfile(process):
        raise CommandError(f"process file {process!r} does not exist")
    invocation.runc.become("exec", line.raw)
    return 1  # not reached


def _by_id(command: str) -> Handler:
    def become(invocation: Invocation, line: CommandLine) -> int:
        container_id(line, command)
        invocation.runc.become(command, line.raw)
        return 1  # not reached

    return become


def _plain(command: str) -> Handler:
    def become(invocation: Invocation, line: CommandLine) -> int:
        invocation.runc.become(command, line.raw)
        return 1  # not reached

    return become


def _read_config(bundle: str) -> bytes:
    """The bundle's config.json, as bytes; it must at least look like a JSON object.

    Parsing it (``json`` costs the call ~10 ms of imports) waits until runc
    runs, unless it names the isolation annotation; a spec runc cannot parse is
    named after runc refused it (:mod:`hcsoci.runtime_cli.containers`).
    """
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise CommandError(f"bundle {bundle!r}: config.json does not exist") from None
    except OSError as err:
        raise CommandError(f"bundle {bundle!r}: config.json: {err.strerror}") from None
    if not data.lstrip().startswith(b"{"):
        raise CommandError(f"bundle {bundle!r}: config.json is not a JSON object")
    return data


def _create(command: str) -> Handler:
    """``create`` / ``run``: check, make the marker, start runc; then record while it works."""

    def handle(invocation: Invocation, line: CommandLine) -> int:
        wanted = container_id(line, command)
        bundle = os.path.abspath(line.value("bundle") or os.getcwd())
        config = _read_config(bundle)
        isolation = invocation.isolation
        if not isolation and may_name_isolation(config):
            from hcsoci.runtime_cli import containers

            isolation = containers.check_isolation_annotation(bundle, config)
        if isolation != "vm" and may_name_pod_role(config):
            from hcsoci.runtime_cli import pods  # a pod's container follows its sandbox

            isolation = pods.isolation_for_pod(invocation.root, wanted, bundle, config, isolation)
        if isolation == "vm":
            if command == "run":
                raise CommandError("run: not supported with VM isolation (use create and start)")
            if is_vm_container(invocation.root, wanted):
                raise CommandError(f"container with id exists: {wanted}")
            from hcsoci.runtime_cli import vm

            return vm.create(invocation, line, wanted, bundle)
        check_parent(line.value("pid-file"), "pid file")
        if invocation.held_by_runc(wanted):
            raise CommandError(f"container with id exists: {wanted}")
        if not markers.make(invocation.root, wanted):
            from hcsoci.runtime_cli import containers

            containers.take_over_stale_marker(invocation, wanted)
        if not os.path.exists(os.path.join(invocation.root, "state.db")):
            # A new root: the store must exist before runc's state does (it refuses to
            # start empty beside runc state it does not know).
            from hcsoci.runtime_cli import containers

            containers.open_root_store(invocation)
        os.makedirs(invocation.runc_root, mode=0o700, exist_ok=True)
        foreground = command == "run" and not line.is_set("detach")
        try:
            pid = invocation.runc.spawn(command, line.raw, forward_signals=foreground)
        except BaseException:
            markers.remove(invocation.root, wanted)
            raise
        from hcsoci.runtime_cli import containers

        return containers.finish_create(invocation, command, line, wanted, bundle, config, pid)

    return handle


def _delete(invocation: Invocation, line: CommandLine) -> int:
    """``delete``: runc deletes (started first), the records go after."""
    wanted = container_id(line, "delete")
    if is_vm_container(invocation.root, wanted):
        from hcsoci.runtime_cli import vm

        return vm.run_vm_command(invocation, "delete", line)
    held = invocation.held_by_runc(wanted)
    if not held and not markers.exists(invocation.root, wanted):
        # containerd's shim always follows a delete with a forced one: answered at once.
        if line.is_set("force"):
            return 0  # as runc: forcing the delete of nothing succeeds
        raise CommandError(f"container does not exist: {wanted}")
    pid = invocation.runc.spawn("delete", line.raw) if held else 0
    from hcsoci.runtime_cli import containers

    return containers.finish_delete(invocation, wanted, pid)


_COMMANDS: dict[str, Handler] = {
    "create": _create("create"),
    "run": _create("run"),
    "delete": _delete,
    "start": _by_id("start"),
    "exec": _exec,
    "kill": _by_id("kill"),
    "state": _by_id("state"),
    "ps": _by_id("ps"),
    "pause": _by_id("pause"),
    "resume": _by_id("resume"),
    "update": _by_id("update"),
    "events": _by_id("events"),
    "list": _plain("list"),
    "features": _plain("features"),
    "spec": _plain("spec"),
}

COMMANDS = frozenset(_COMMANDS)
"""Every command hcsoci-runc knows."""


def _list(invocation: Invocation, line: CommandLine) -> int:
    """runc's ``list``, with the VM containers beside runc's."""
    base = os.path.join(invocation.root, VM_DIRECTORY)
    if not os.path.isdir(base) or not os.listdir(base):
        invocation.runc.become("list", line.raw)
    from hcsoci.runtime_cli import vm

    return vm.list_all(invocation, line)


_COMMANDS["list"] = _list

_BY_VM = frozenset(("start", "exec", "kill", "state", "ps", "pause", "resume", "update", "events"))


def run_command(invocation: Invocation, command: str, line: CommandLine) -> int:
    """Carry out ``command``; its exit status (runc's for what runc did)."""
    if command in _BY_VM and _vm_command(invocation, command, line):
        from hcsoci.runtime_cli import vm

        code = vm.run_vm_command(invocation, command, line)
        sys.stdout.flush()
        return code
    code = _COMMANDS[command](invocation, line)
    sys.stdout.flush()
    return code
