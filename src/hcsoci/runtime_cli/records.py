"""What hcsoci records for a container an engine made through hcsoci-runc.

While runc creates it, the container gets, as every hcsoci container does,
its row in the ``containers`` table and its resource journal
(see :mod:`hcsoci.resources`): ``container-record`` (the row) and
``runtime-container`` (runc's state under hcsoci's root, undone with
``runc delete --force``).  So ``hcsoci list`` shows it, ``hcsoci delete``
releases it, and ``hcsoci gc`` does when its controller died.  The controller
is the process that called the runtime to create it -- the engine's shim or
conmon, which outlive every runtime call and wait for the container -- not
this short-lived program.

The engine's bundle is the engine's: nothing of it is recorded for release.

The two journal records are written here as the JSON that
:class:`hcsoci.create.ContainerRecord` and :class:`hcsoci.create.RuntimeContainer`
decode from, because importing msgspec and the create flow would cost each
engine call tens of milliseconds; ``tests/test_runtime_cli.py`` proves
``hcsoci.gc`` releases what is written here.  What is made *before* runc
starts is the container's marker (:mod:`hcsoci.runtime_cli.markers`), so a
runtime killed in between leaves a marker that ``hcsoci-runc delete`` (which
every engine sends after a failed create) acts on.
"""

from __future__ import annotations

import os

from hcsoci import container_table
from hcsoci.controller import process_start_time
from hcsoci.errors import AlreadyExistsError
from hcsoci.runtime_cli import markers
from hcsoci.store import Store

__all__ = [
    "OWNER",
    "RUNTIME",
    "caller_identity",
    "forget",
    "is_recorded",
    "json_object",
    "record",
    "set_created",
]

OWNER = "hcsoci-runc"
RUNTIME = "runc"
_CONTAINER_RECORD = "container-record"
_RUNTIME_CONTAINER = "runtime-container"
_OWN_KINDS = frozenset((_CONTAINER_RECORD, _RUNTIME_CONTAINER))


def caller_identity() -> tuple[int, int]:
    """(pid, start time) of the process that called this runtime: the container's controller."""
    parent = os.getppid()
    return parent, process_start_time(parent) or 0


def record(store: Store, container_id: str, bundle: str, runc_root: str) -> None:
    """Record the container: its row (the caller as controller), then its journal.

    Raises :class:`~hcsoci.errors.AlreadyExistsError` when the id has a row
    already (another hcsoci container), having written nothing.
    """
    try:
        container_table.insert(
            store, container_id, OWNER, "", bundle, RUNTIME, controller=caller_identity()
        )
    except AlreadyExistsError:
        raise AlreadyExistsError(f"container with id exists: {container_id}") from None
    journal = [
        (_CONTAINER_RECORD, {"container_id": container_id}),
        (_RUNTIME_CONTAINER, {"container_id": container_id, "runtime": RUNTIME, "root": runc_root}),
    ]
    with store.transaction() as conn:
        for kind, data in journal:
            conn.execute(
                "INSERT INTO resources (owner_id, kind, data) VALUES (?, ?, ?)",
                (container_id, kind, json_object(data).encode()),
            )


def is_recorded(store: Store, container_id: str) -> bool:
    """Whether the id has a row (a marker without one is stale: gc released it)."""
    return container_table.get(store, container_id) is not None


def set_created(store: Store, container_id: str, init_pid: int, state: str = "created") -> None:
    """runc created the container (``running`` after ``run --detach``); its init is ``init_pid``."""
    container_table.set_state(store, container_id, state, init_pid)


def forget(store: Store, root: str, container_id: str) -> None:
    """Drop the records of a container runc no longer holds.

    A container hcsoci itself created (its journal holds mounts, a bundle...)
    is released through :func:`hcsoci.gc.release_container`.
    """
    kinds = {
        row["kind"]
        for row in store.query("SELECT kind FROM resources WHERE owner_id = ?", (container_id,))
    }
    if kinds <= _OWN_KINDS:
        with store.transaction() as conn:
            conn.execute("DELETE FROM resources WHERE owner_id = ?", (container_id,))
        container_table.delete(store, container_id)
    else:
        from hcsoci.context import background
        from hcsoci.gc import release_container

        release_container(background(), container_id, store)
    markers.remove(root, container_id)


def json_object(fields: dict[str, str]) -> str:
    """``fields`` as a JSON object, as ``json.dumps`` writes it (``json`` would cost the
    call its ``re``): every character outside printable ASCII is a ``\\u`` escape."""
    pairs = (f"{_json_string(key)}: {_json_string(value)}" for key, value in fields.items())
    return "{" + ", ".join(pairs) + "}"


_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def _json_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code > 0xFFFF:  # a surrogate pair, as JSON spells it
            code -= 0x10000
            out.append(f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)
