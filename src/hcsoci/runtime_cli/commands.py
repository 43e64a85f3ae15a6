"""Each runc command, as hcsoci-runc carries it out (process isolation).

Every command checks the container id with :func:`hcsoci.paths.check_id`.
``create`` and ``run`` record the container in hcsoci's store before runc
makes anything and undo everything when runc fails; ``delete`` releases the
records once runc let go of the container.  The rest become runc.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hcsoci.errors import AlreadyExistsError
from hcsoci.paths import check_id, make_private_dir
from hcsoci.runtime_cli import records
from hcsoci.runtime_cli.argv import CommandLine, UsageError
from hcsoci.runtime_cli.runc import RuncCommand

TYPE_CHECKING = False  # typing costs milliseconds at start-up; only type checkers need it
if TYPE_CHECKING:
    from hcsoci.store import Store

Handler = Callable[["Invocation", CommandLine], int]

__all__ = ["COMMANDS", "ISOLATION_ANNOTATION", "CommandError", "Invocation", "run_command"]

ISOLATION_ANNOTATION = "io.hcsoci.isolation"
ISOLATIONS = ("process", "vm")


class CommandError(Exception):
    """The command failed for a reason of hcsoci-runc's own; the message is one line."""


class Invocation:
    """One call of the runtime: hcsoci's state root, runc, and the chosen isolation."""

    def __init__(self, root: Path, runc: RuncCommand, isolation: str, program: str) -> None:
        self.root = root
        self.runc_root = root / "runc"
        self.runc = runc
        self.isolation = isolation
        """'process', 'vm', or '' (not chosen by flag or name: the annotation decides)."""
        self.program = program

    def store(self) -> Store:
        """The state store under :attr:`root` (opened on first use)."""
        from hcsoci.store import open_store

        return open_store(self.root)


def _container_id(line: CommandLine, command: str) -> str:
    if not line.args:
        raise UsageError(f'"{command}" requires a container id')
    return check_id(line.args[0], "container id")


def _config(bundle: Path) -> dict[str, object]:
    path = bundle / "config.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"bundle {str(bundle)!r}: config.json does not exist") from None
    except OSError as err:
        raise CommandError(f"bundle {str(bundle)!r}: config.json: {err.strerror}") from None
    try:
        config = json.loads(data)
    except ValueError as err:
        raise CommandError(
            f"bundle {str(bundle)!r}: config.json is not valid JSON: {err}"
        ) from None
    if not isinstance(config, dict):
        raise CommandError(f"bundle {str(bundle)!r}: config.json is not a JSON object")
    return config


def _isolation(invocation: Invocation, config: dict[str, object]) -> str:
    annotations = config.get("annotations")
    chosen = invocation.isolation
    if not chosen and isinstance(annotations, dict):
        chosen = str(annotations.get(ISOLATION_ANNOTATION, ""))
        if chosen and chosen not in ISOLATIONS:
            raise CommandError(
                f"annotation {ISOLATION_ANNOTATION}: {chosen!r} is not an isolation "
                "(use process or vm)"
            )
    chosen = chosen or "process"
    if chosen == "vm":
        raise CommandError(
            "isolation vm: not available through hcsoci-runc yet (the VM controller "
            "process is still to come); use --isolation process, or hcsoci run --isolation vm"
        )
    return chosen


def _check_parent(path: str, field: str) -> None:
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CommandError(
            f"{field} {path!r}: directory {os.path.dirname(os.path.abspath(path))!r} does not exist"
        )


def _read_pid(path: str) -> int:
    try:
        with open(path, "rb") as file:
            return int(file.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _create(invocation: Invocation, command: str, line: CommandLine) -> int:
    """``create`` (and ``run``): record, let runc create, undo everything on failure."""
    container_id = _container_id(line, command)
    bundle = Path(os.path.abspath(line.value("bundle") or os.getcwd()))
    config = _config(bundle)
    _isolation(invocation, config)
    pid_file = line.value("pid-file")
    _check_parent(pid_file, "pid file")
    if (invocation.runc_root / container_id).exists():
        raise CommandError(f"container with id exists: {container_id}")
    store = invocation.store()
    make_private_dir(invocation.runc_root)
    try:
        records.record(store, invocation.root, container_id, bundle, invocation.runc_root)
    except AlreadyExistsError as err:
        raise CommandError(str(err)) from None
    except BaseException:
        records.forget(store, invocation.root, container_id)  # what was recorded of it
        raise
    keep = False
    try:
        foreground = command == "run" and not line.is_set("detach")
        code = invocation.runc.call(command, line.raw, forward_signals=foreground)
        if code == 0 and not foreground:
            init_pid = _read_pid(pid_file) if pid_file else 0
            state = "running" if command == "run" else "created"
            records.set_created(store, container_id, init_pid, state)
            keep = True
        elif foreground and line.is_set("keep"):
            keep = True
        return code
    finally:
        if not keep:
            _undo(invocation, store, container_id)


def _undo(invocation: Invocation, store: Store, container_id: str) -> None:
    """After a failed create (or a foreground run's end): nothing of it may stay."""
    if (invocation.runc_root / container_id).exists():
        quiet = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        saved = os.dup(2)
        os.dup2(quiet, 2)
        try:
            invocation.runc.call("delete", ["--force", container_id])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(quiet)
    records.forget(store, invocation.root, container_id)


def _delete(invocation: Invocation, line: CommandLine) -> int:
    container_id = _container_id(line, "delete")
    held_by_runc = (invocation.runc_root / container_id).exists()
    if not held_by_runc and not records.has_marker(invocation.root, container_id):
        if line.is_set("force"):
            return 0  # as runc: forcing the delete of nothing succeeds
        raise CommandError(f"container does not exist: {container_id}")
    if held_by_runc:
        code = invocation.runc.call("delete", line.raw)
        if code != 0:
            return code
    records.forget(invocation.store(), invocation.root, container_id)
    return 0


def _start(invocation: Invocation, line: CommandLine) -> int:
    _container_id(line, "start")
    invocation.runc.become("start", line.raw)
    return 1  # not reached


def _exec(invocation: Invocation, line: CommandLine) -> int:
    _container_id(line, "exec")
    _check_parent(line.value("pid-file"), "pid file")
    process = line.value("process")
    if process and not os.path.isfile(process):
        raise CommandError(f"process file {process!r} does not exist")
    invocation.runc.become("exec", line.raw)
    return 1


def _by_id(command: str) -> Handler:
    def become(invocation: Invocation, line: CommandLine) -> int:
        _container_id(line, command)
        invocation.runc.become(command, line.raw)
        return 1

    return become


def _plain(command: str) -> Handler:
    def become(invocation: Invocation, line: CommandLine) -> int:
        invocation.runc.become(command, line.raw)
        return 1

    return become


_COMMANDS: dict[str, Handler] = {
    "create": lambda invocation, line: _create(invocation, "create", line),
    "run": lambda invocation, line: _create(invocation, "run", line),
    "start": _start,
    "exec": _exec,
    "delete": _delete,
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


def run_command(invocation: Invocation, command: str, line: CommandLine) -> int:
    """Carry out ``command``; its exit status (runc's for what runc did)."""
    code = _COMMANDS[command](invocation, line)
    sys.stdout.flush()
    return code
