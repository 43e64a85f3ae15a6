"""Hypervisor isolation: the utility VM (QEMU) that hosts containers."""

from __future__ import annotations

__all__ = ["UtilityVM"]


class UtilityVM:
    """A QEMU utility VM (being built: see issue 5)."""
