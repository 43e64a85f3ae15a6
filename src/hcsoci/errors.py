"""The exception hierarchy every hcsoci error belongs to.

All errors raised by this package derive from :class:`HcsociError`.  "Not found"
errors also derive from :class:`FileNotFoundError`, so callers can test for them
the way Go code uses ``os.IsNotExist``.
"""

from __future__ import annotations


class HcsociError(Exception):
    """Root of every error this package raises."""


class NotFoundError(HcsociError, FileNotFoundError):
    """Something named by the caller (a file, id, user, layer...) does not exist."""

    def __init__(self, message: str) -> None:
        # FileNotFoundError's OSError constructor would reformat a single arg; keep it plain.
        HcsociError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(HcsociError, ValueError):
    """Bad input: the message names the field and the offending value."""


class NotExecutableError(InvalidArgumentError):
    """The command to run exists but cannot be executed (a directory, no execute permission)."""


class AlreadyExistsError(HcsociError, FileExistsError):
    """An object with the same id or name exists already."""

    def __init__(self, message: str) -> None:
        HcsociError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StateError(HcsociError):
    """The operation is not valid in the object's current state."""


class UnsafePathError(HcsociError):
    """A path would leave its parent, or a removal would cross a symlink or a mount
    (re-exported by :mod:`hcsoci.paths`)."""
