"""What a container reports about itself: :class:`ContainerProperties`.

A leaf module, so that every kind of container (on this machine, in a utility
VM, or reached through a VM's controller process) reports the same type
without importing the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ContainerProperties"]


@dataclass
class ContainerProperties:
    """What a container's ``properties(ctx)`` reports."""

    id: str
    owner: str
    state: str
    """``created``, ``running``, ``paused`` or ``stopped``."""
    init_pid: int
    processes: list[int] = field(default_factory=list)
    memory_usage_bytes: int | None = None
    cpu_usage_ns: int | None = None
    exit_code: int | None = None
    bundle: str = ""
    runtime: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)
