"""``create``, ``run`` and ``delete``: the commands that change what hcsoci records.

``create`` reads the engine's bundle (``config.json`` must be a JSON object;
its ``io.hcsoci.isolation`` annotation may choose the isolation), records the
container (see :mod:`hcsoci.runtime_cli.records`), and lets runc create it
from the spec as the engine wrote it.  When anything fails -- runc refusing
the spec, a console socket nobody listens on, a signal -- runc's half-made
container is deleted and the records dropped, so nothing is left behind.
``delete`` lets runc delete first and drops the records after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hcsoci.errors import AlreadyExistsError
from hcsoci.paths import make_private_dir
from hcsoci.runtime_cli import markers, records
from hcsoci.runtime_cli.argv import CommandLine
from hcsoci.runtime_cli.commands import (
    ISOLATION_ANNOTATION,
    CommandError,
    Invocation,
    check_parent,
    container_id,
    vm_refused,
)
from hcsoci.store import Store, open_store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hcsoci.runtime_cli.commands import Handler

__all__ = ["HANDLERS"]


def _config(bundle: str) -> dict[str, object]:
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise CommandError(f"bundle {bundle!r}: config.json does not exist") from None
    except OSError as err:
        raise CommandError(f"bundle {bundle!r}: config.json: {err.strerror}") from None
    try:
        config = json.loads(data)
    except ValueError as err:
        raise CommandError(f"bundle {bundle!r}: config.json is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise CommandError(f"bundle {bundle!r}: config.json is not a JSON object")
    return config


def _check_isolation(invocation: Invocation, config: dict[str, object]) -> None:
    chosen = invocation.isolation
    annotations = config.get("annotations")
    if not chosen and isinstance(annotations, dict):
        chosen = str(annotations.get(ISOLATION_ANNOTATION, ""))
        if chosen and chosen not in ("process", "vm"):
            raise CommandError(
                f"annotation {ISOLATION_ANNOTATION}: {chosen!r} is not an isolation "
                "(use process or vm)"
            )
    if chosen == "vm":
        raise vm_refused()


def _read_pid(path: str) -> int:
    try:
        with open(path, "rb") as file:
            return int(file.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _create(invocation: Invocation, command: str, line: CommandLine) -> int:
    wanted = container_id(line, command)
    bundle = os.path.abspath(line.value("bundle") or os.getcwd())
    _check_isolation(invocation, _config(bundle))
    pid_file = line.value("pid-file")
    check_parent(pid_file, "pid file")
    if invocation.held_by_runc(wanted):
        raise CommandError(f"container with id exists: {wanted}")
    if not markers.make(invocation.root, wanted):
        _take_over_stale_marker(invocation, wanted)
    os.makedirs(invocation.runc_root, mode=0o700, exist_ok=True)
    foreground = command == "run" and not line.is_set("detach")
    try:
        pid = invocation.runc.spawn(command, line.raw, forward_signals=foreground)
    except BaseException:
        markers.remove(invocation.root, wanted)
        raise
    # The store is opened and written while runc creates: the engine waits for neither.
    store: Store | None = None
    failure: BaseException | None = None
    try:
        store = _open_store(invocation)
        records.record(store, wanted, Path(bundle), Path(invocation.runc_root))
    except BaseException as err:
        failure = err
    code = invocation.runc.wait(pid)
    keep = False
    try:
        if failure is not None:
            if isinstance(failure, AlreadyExistsError):
                raise CommandError(str(failure))
            raise failure
        assert store is not None
        if code == 0 and not foreground:
            init_pid = _read_pid(pid_file) if pid_file else 0
            state = "running" if command == "run" else "created"
            records.set_created(store, wanted, init_pid, state)
            keep = True
        elif foreground and line.is_set("keep"):
            keep = True
        return code
    finally:
        if not keep:
            _undo(invocation, store, wanted, recorded=not isinstance(failure, AlreadyExistsError))


def _open_store(invocation: Invocation) -> Store:
    make_private_dir(invocation.root)
    return open_store(invocation.root)


def _take_over_stale_marker(invocation: Invocation, wanted: str) -> None:
    """The id has a marker: another create's (refuse), or stale after ``hcsoci gc``.

    A create writes its rows while runc works, so a marker younger than
    :data:`_FRESH` without a row may be a create in flight: refused too
    (``hcsoci-runc delete --force ID`` clears a stale one at once).
    """
    if markers.age(invocation.root, wanted) < _FRESH or records.is_recorded(
        _open_store(invocation), wanted
    ):
        raise CommandError(f"container with id exists: {wanted}")
    markers.make(invocation.root, wanted, take_over=True)


_FRESH = 10.0
"""Seconds within which a marker without a row is taken for a create in flight."""


def _undo(invocation: Invocation, store: Store | None, wanted: str, recorded: bool) -> None:
    """After a failed create (or a foreground run's end): nothing of it may stay."""
    if invocation.held_by_runc(wanted):
        quiet = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        saved = os.dup(2)
        os.dup2(quiet, 2)
        try:
            invocation.runc.call("delete", ["--force", wanted])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(quiet)
    if store is not None and recorded:
        records.forget(store, Path(invocation.root), wanted)
    else:
        markers.remove(invocation.root, wanted)


def _delete(invocation: Invocation, line: CommandLine) -> int:
    wanted = container_id(line, "delete")
    pid = invocation.runc.spawn("delete", line.raw) if invocation.held_by_runc(wanted) else 0
    store = _open_store(invocation)  # while runc deletes
    code = invocation.runc.wait(pid) if pid else 0
    if code != 0:
        return code  # runc said why (a running container without --force)
    records.forget(store, Path(invocation.root), wanted)
    return 0


HANDLERS: dict[str, Handler] = {
    "create": lambda invocation, line: _create(invocation, "create", line),
    "run": lambda invocation, line: _create(invocation, "run", line),
    "delete": _delete,
}
"""The recorded commands, by name."""
