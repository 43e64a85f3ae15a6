"""The base of every runtime-spec struct, and the integer types the spec uses."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Int64", "SpecStruct", "UInt16", "UInt32", "UInt64"]

UInt16 = Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)]
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
# msgspec bounds must fit an int64, so uint64 fields are only checked for sign.
UInt64 = Annotated[int, msgspec.Meta(ge=0)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class SpecStruct(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Base of every runtime-spec struct: camelCase JSON keys, unset fields omitted.

    Unknown keys are refused, so a misspelt key (``"readOnly"``) is an error
    naming its JSON path instead of a setting silently ignored.
    """
