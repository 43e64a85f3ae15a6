"""Resources: the ordered record of everything a container's creation allocated.

Each allocation is a :class:`Resource` record.  It is written to the state store
*before* the allocation happens (:meth:`Resources.add`), so a controller that is
killed halfway leaves a record another process can release.  Every
``Resource.release`` therefore tolerates "never allocated" and "already gone".

:func:`release_resources` releases in reverse order of allocation, keeps going
past failures (what failed stays recorded, so a second call retries it), and with
``all=False`` leaves utility-VM shares in place because the VM is about to go
away (their records go when the VM's state does: see ``forget_vm_records``).
"""

from __future__ import annotations

import logging
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from hcsoci.context import Context, background
from hcsoci.errors import HcsociError
from hcsoci.store import Store, open_store

if TYPE_CHECKING:
    from hcsoci.uvm import UtilityVM

__all__ = [
    "ReleaseError",
    "Resource",
    "forget_vm_records",
    "Resources",
    "load_resources",
    "release_resources",
    "resource_kinds",
]

log = logging.getLogger(__name__)

_KINDS: dict[str, type[Resource]] = {}


class Resource(msgspec.Struct, kw_only=True):
    """One allocation.  Subclasses set ``kind`` and implement :meth:`release`.

    Fields are the record: they must be enough to release the allocation from
    another process, after this one died.
    """

    kind: ClassVar[str] = ""
    in_vm: ClassVar[bool] = False
    """True for utility-VM shares (Plan9, SCSI, vPMEM): kept by ``release_resources(all=False)``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    def release(self, ctx: Context, vm: UtilityVM | None) -> None:
        """Undo the allocation.  Must succeed quietly when it is already undone."""
        raise NotImplementedError


def resource_kinds() -> dict[str, type[Resource]]:
    """Every registered resource kind, by name."""
    return dict(_KINDS)


class ReleaseError(HcsociError):
    """Some resources could not be released; they stay recorded for a retry."""

    def __init__(self, failures: list[tuple[Resource, BaseException]]) -> None:
        self.failures = failures
        detail = "; ".join(f"{r.kind} {_describe(r)}: {e}" for r, e in failures)
        super().__init__(f"failed to release {len(failures)} resource(s): {detail}")


def _describe(resource: Resource) -> str:
    return msgspec.json.encode(resource).decode()


class Resources:
    """What creating one container allocated, in order (the seed's ``Resources``).

    It holds nothing a client needs but :attr:`net_ns`; pass it to
    :func:`release_resources` when the container is gone.
    """

    def __init__(self, owner_id: str, store: Store | None = None) -> None:
        self.owner_id = owner_id
        self._store = store
        self._items: list[tuple[int, Resource]] = []  # (state row id, record)
        self._net_ns = ""
        self.container_root_in_uvm = ""
        self.hosting_system: UtilityVM | None = None
        """The utility VM the container lives in (what ``with`` releases with), if any."""
        self._handed_over = False

    def hand_over(self) -> None:
        """The durable record now answers for these allocations (``hcsoci delete`` or
        gc releases them): dropping this object is no longer a leak."""
        self._handed_over = True

    def __enter__(self) -> Resources:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``release_resources(ctx, self, self.hosting_system, True)``."""
        release_resources(background(), self, self.hosting_system, True)

    def __del__(self) -> None:
        items = getattr(self, "_items", None)
        if items and not getattr(self, "_handed_over", True):
            kinds = ", ".join(item.kind for _, item in items)
            warnings.warn(
                f"resources of {self.owner_id} dropped unreleased ({kinds}); "
                "release_resources() or hand_over() says what becomes of them",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    @property
    def net_ns(self) -> str:
        """The network namespace the container joined ('' when none)."""
        return self._net_ns

    @net_ns.setter
    def net_ns(self, value: str) -> None:
        self._net_ns = value

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store()
        return self._store

    def add(self, resource: Resource) -> Resource:
        """Record ``resource`` durably.  Call this *before* making the allocation."""
        row = self.store.execute(
            "INSERT INTO resources (owner_id, kind, data) VALUES (?, ?, ?)",
            (self.owner_id, resource.kind, msgspec.json.encode(resource)),
        )
        self._items.append((row, resource))
        return resource

    def update(self, resource: Resource) -> None:
        """Re-record ``resource`` after its fields changed (an allocation learnt its name)."""
        for row, item in self._items:
            if item is resource:
                self.store.execute(
                    "UPDATE resources SET data = ? WHERE id = ?",
                    (msgspec.json.encode(resource), row),
                )
                return
        raise KeyError(resource)

    def items(self) -> list[Resource]:
        """The records still held, oldest first."""
        return [item for _, item in self._items]

    def find(self, kind: type[Resource]) -> list[Any]:
        """The held records of one kind, oldest first."""
        return [item for _, item in self._items if isinstance(item, kind)]

    def forget(self, resource: Resource) -> None:
        """Drop a record without releasing it (it was released some other way)."""
        for index, (row, item) in enumerate(self._items):
            if item is resource:
                self.store.execute("DELETE FROM resources WHERE id = ?", (row,))
                del self._items[index]
                return

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        kinds = ", ".join(item.kind for _, item in self._items)
        return f"<Resources {self.owner_id} [{kinds}]>"


def forget_vm_records(store: Store, vm_id: str) -> int:
    """Drop every in-VM record (``Resource.in_vm``) of the VM ``vm_id``: it is gone.

    What ``release_resources(all=False)`` left in place went with the VM; a
    record that outlived it would only be a row nobody can act on.  Returns
    how many rows went.
    """
    kinds = [kind for kind, cls in _KINDS.items() if cls.in_vm]
    if not kinds:
        return 0
    marks = ", ".join("?" * len(kinds))
    with store.transaction() as conn:
        cursor = conn.execute(
            f"DELETE FROM resources WHERE kind IN ({marks})"
            " AND json_extract(CAST(data AS TEXT), '$.vm_id') = ?",
            (*kinds, vm_id),
        )
        return cursor.rowcount


def load_resources(owner_id: str, store: Store | None = None) -> Resources:
    """Rebuild the :class:`Resources` of ``owner_id`` from the state store (for gc).

    The records stay the store's: dropping the object unreleased is not a leak.
    """
    resources = Resources(owner_id, store)
    resources.hand_over()
    rows = resources.store.query(
        "SELECT id, kind, data FROM resources WHERE owner_id = ? ORDER BY id", (owner_id,)
    )
    for row in rows:
        cls = _KINDS.get(row["kind"])
        if cls is None:
            raise HcsociError(
                f"state store: unknown resource kind {row['kind']!r} (row {row['id']})"
            )
        resources._items.append((row["id"], msgspec.json.decode(row["data"], type=cls)))
    return resources


def release_resources(
    ctx: Context, resources: Resources, vm: UtilityVM | None = None, all: bool = True
) -> None:
    """Release ``resources`` in reverse order of allocation.

    Already-released resources are fine, and the call may be repeated: what
    fails stays recorded and the rest carry on.  With ``all=False`` utility-VM
    shares are left in place (the VM is about to go away with them).
    Raises :class:`ReleaseError` listing what could not be released.
    """
    failures: list[tuple[Resource, BaseException]] = []
    for row, resource in reversed(list(resources._items)):
        if resource.in_vm and not all:
            continue
        try:
            resource.release(ctx, vm)
        except Exception as err:  # keep releasing the rest; report at the end
            log.error("release failed", extra={"kind": resource.kind, "error": str(err)})
            failures.append((resource, err))
            continue
        resources.store.execute("DELETE FROM resources WHERE id = ?", (row,))
        resources._items = [(r, i) for r, i in resources._items if r != row]
    if failures:
        raise ReleaseError(failures)
