"""What ``create``, ``run`` and ``delete`` do once runc is running: record, release, undo.

:mod:`hcsoci.runtime_cli.commands` checks the call, makes the container's
marker and starts runc; this module (the store: ``sqlite3``'s milliseconds of
imports) is imported only then, so its imports and the store's writes happen
while runc works.  ``create`` records the container (see
:mod:`hcsoci.runtime_cli.records`) and, when anything fails -- runc refusing
the spec, a console socket nobody listens on, a signal -- deletes runc's
half-made container and drops the records, so nothing is left behind.
``delete`` drops the records once runc deleted the container.
"""

from __future__ import annotations

import os

from hcsoci.errors import AlreadyExistsError
from hcsoci.runtime_cli import markers, records
from hcsoci.runtime_cli.annotations import ISOLATION
from hcsoci.runtime_cli.argv import CommandLine
from hcsoci.runtime_cli.commands import CommandError, Invocation
from hcsoci.store import Store, open_store

__all__ = [
    "check_isolation_annotation",
    "finish_create",
    "finish_delete",
    "open_root_store",
    "take_over_stale_marker",
]


def check_isolation_annotation(bundle: str, data: bytes) -> str:
    """The spec's ``io.hcsoci.isolation`` annotation: ``process``, ``vm`` or '' (none)."""
    config = _parse_config(bundle, data)
    annotations = config.get("annotations") if isinstance(config, dict) else None
    chosen = str(annotations.get(ISOLATION, "")) if isinstance(annotations, dict) else ""
    if chosen and chosen not in ("process", "vm"):
        raise CommandError(
            f"annotation {ISOLATION}: {chosen!r} is not an isolation (use process or vm)"
        )
    return chosen


def _parse_config(bundle: str, data: bytes) -> object:
    import json

    try:
        return json.loads(data)
    except ValueError as err:
        raise CommandError(f"bundle {bundle!r}: config.json is not valid JSON: {err}") from None


def _read_pid(path: str) -> int:
    try:
        with open(path, "rb") as file:
            return int(file.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def finish_create(
    invocation: Invocation,
    command: str,
    line: CommandLine,
    wanted: str,
    bundle: str,
    config: bytes,
    pid: int,
) -> int:
    """Record the container while runc (``pid``) creates it; undo everything on failure.

    ``config`` is the bundle's config.json as runc read it.  When runc fails, a
    config.json that is not JSON at all gets a line of its own, after runc's
    (``unexpected EOF``, ``invalid character``): engines show the last error in
    ``--log``.  ``json`` is imported only then.
    """
    foreground = command == "run" and not line.is_set("detach")
    pid_file = line.value("pid-file")
    # The store is opened and written while runc creates: the engine waits for neither.
    store: Store | None = None
    failure: BaseException | None = None
    try:
        store = open_root_store(invocation)
        records.record(store, wanted, bundle, invocation.runc_root)
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
        if code != 0:  # a spec runc could not parse never ran: a foreground run too
            _parse_config(bundle, config)
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


def open_root_store(invocation: Invocation) -> Store:
    """The store under the invocation's root (which the store makes private), opened once
    per process."""
    return open_store(invocation.root)


def take_over_stale_marker(invocation: Invocation, wanted: str) -> None:
    """The id has a marker: another create's (refuse), or stale after ``hcsoci gc``.

    A create writes its rows while runc works, so a marker younger than
    :data:`_FRESH` without a row may be a create in flight: refused too
    (``hcsoci-runc delete --force ID`` clears a stale one at once).
    """
    if markers.age(invocation.root, wanted) < _FRESH or records.is_recorded(
        open_root_store(invocation), wanted
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
        records.forget(store, invocation.root, wanted)
    else:
        markers.remove(invocation.root, wanted)


def finish_delete(invocation: Invocation, wanted: str, pid: int) -> int:
    """Drop the records once runc (``pid``, 0 when runc held nothing) deleted the container."""
    store = open_root_store(invocation)  # while runc deletes
    code = invocation.runc.wait(pid) if pid else 0
    if code != 0:
        return code  # runc said why (a running container without --force)
    records.forget(store, invocation.root, wanted)
    return 0
