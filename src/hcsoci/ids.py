"""The one id rule (runc's), as a leaf module: no ``re``, no ``pathlib``.

:func:`check_id` is re-exported by :mod:`hcsoci.paths`, where the paths made
from ids live; it is defined here so the ``hcsoci-runc`` runtime can check an
engine's id without importing what a path module needs (``re`` and
``pathlib`` cost it ~10 ms per call).  :data:`hcsoci.paths.ID_PATTERN` is the
same rule as a regular expression.
"""

from __future__ import annotations

from hcsoci.errors import InvalidArgumentError

__all__ = ["ID_RULE", "check_id", "is_valid_id"]

ID_RULE = "1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"

_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_REST = _FIRST | frozenset("_.-")


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a string that satisfies the id rule."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and value[0] in _FIRST
        and all(character in _REST for character in value)
    )


def check_id(value: object, field: str) -> str:
    """``value`` when it is a valid id; else :class:`InvalidArgumentError` naming ``field``."""
    if not is_valid_id(value):
        shown = (
            repr(value)
            if not isinstance(value, str) or len(value) <= 80
            else (f"{value[:40]!r}... ({len(value)} characters)")
        )
        raise InvalidArgumentError(f"{field}: {shown} is not a valid id ({ID_RULE})")
    assert isinstance(value, str)
    return value
