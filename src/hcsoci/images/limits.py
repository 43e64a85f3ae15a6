"""How much one layer may occupy once extracted, and how those limits are set.

A layer is limited in two ways, both checked while it is extracted (the
extraction stops as soon as a limit is crossed):

* **bytes**: the size of the *uncompressed* tar stream, headers included.
  Every byte written to disk comes from that stream, so this bounds the disk
  a layer can fill whatever its compression ratio.  A sparse file counts as
  the data regions the tar stores (what is written), not its apparent size:
  its holes stay holes on disk and cost nothing.
* **entries**: the number of tar entries (files, directories, links, whiteouts...).

Each limit comes from, in order: the :class:`~hcsoci.images.ImageStore`
keyword argument, the environment (:data:`MAX_LAYER_BYTES_ENV`,
:data:`MAX_LAYER_ENTRIES_ENV`), the default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hcsoci.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_LAYER_BYTES",
    "DEFAULT_MAX_LAYER_ENTRIES",
    "MAX_LAYER_BYTES_ENV",
    "MAX_LAYER_ENTRIES_ENV",
    "LayerLimits",
    "check_limit",
    "format_size",
    "parse_size",
]

DEFAULT_MAX_LAYER_BYTES = 8 << 30
"""8 GiB of uncompressed tar per layer."""
DEFAULT_MAX_LAYER_ENTRIES = 1_000_000
MAX_LAYER_BYTES_ENV = "HCSOCI_MAX_LAYER_BYTES"
MAX_LAYER_ENTRIES_ENV = "HCSOCI_MAX_LAYER_ENTRIES"

_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SIZE_RULE = "a number of bytes, or a number with K, M, G or T (1024-based), e.g. 512M or 8G"


def parse_size(text: str, field: str = "") -> int:
    """``text`` (``8G``, ``512M``, ``64KiB``, ``1048576``) as a positive number of bytes.

    Units are powers of 1024.  Anything else is an :class:`InvalidArgumentError`
    naming the value (and ``field``, when given).
    """
    match = _SIZE.fullmatch(text.strip())
    value = int(match.group(1)) << _UNITS[match.group(2).upper()] if match else 0
    if value < 1:
        where = f"{field}: " if field else ""
        raise InvalidArgumentError(f"{where}{text!r} is not a size ({_SIZE_RULE})")
    return value


def format_size(size: int) -> str:
    """``size`` bytes for a message: in the largest binary unit that divides it exactly."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def check_limit(value: object, field: str) -> int:
    """``value`` if a positive ``int``, else :class:`InvalidArgumentError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{field}: must be a positive integer (got {value!r})")
    return value


def _count(text: str, field: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise InvalidArgumentError(f"{field}: {text!r} is not a positive whole number")
    return int(text)


@dataclass(frozen=True)
class LayerLimits:
    """The most one layer may hold: uncompressed tar bytes and tar entries."""

    max_bytes: int = DEFAULT_MAX_LAYER_BYTES
    max_entries: int = DEFAULT_MAX_LAYER_ENTRIES

    def __post_init__(self) -> None:
        check_limit(self.max_bytes, "max_layer_bytes")
        check_limit(self.max_entries, "max_layer_entries")

    @classmethod
    def resolve(cls, max_bytes: int | None = None, max_entries: int | None = None) -> LayerLimits:
        """The limits to use: the values given, else the environment's, else the defaults."""
        if max_bytes is None:
            text = os.environ.get(MAX_LAYER_BYTES_ENV, "")
            max_bytes = parse_size(text, MAX_LAYER_BYTES_ENV) if text else DEFAULT_MAX_LAYER_BYTES
        if max_entries is None:
            text = os.environ.get(MAX_LAYER_ENTRIES_ENV, "")
            max_entries = _count(text, MAX_LAYER_ENTRIES_ENV) if text else DEFAULT_MAX_LAYER_ENTRIES
        return cls(max_bytes=max_bytes, max_entries=max_entries)
