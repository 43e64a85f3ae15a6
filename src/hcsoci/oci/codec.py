"""Decoding and encoding ``config.json``.

:func:`decode_spec` turns JSON (or an already-parsed dict) into a :class:`Spec`
and validates it; every error names the JSON path and the offending value.
:func:`encode_spec` writes the spec back; ``decode_spec(encode_spec(s)) == s``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from hcsoci.oci.spec import Spec
from hcsoci.oci.validation import SpecError, validate_spec

__all__ = ["decode_spec", "encode_spec"]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Spec)
# msgspec's messages: "<problem> - at `$.a.b[0]`" (no suffix at the top level).
_LOCATED = re.compile(r"^(?P<problem>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")
_MISSING = object()


def decode_spec(data: bytes | bytearray | memoryview | str | dict[str, Any]) -> Spec:
    """Decode a runtime-spec ``config.json`` and validate it.

    ``data`` is the JSON text (bytes or str) or the dict ``json.loads`` made of it.
    Raises :class:`SpecError` (an ``InvalidArgumentError``) naming the JSON path
    and value of the first problem: malformed JSON, a wrong type, an unknown or
    missing key, or a value :func:`validate_spec` refuses.
    """
    try:
        if isinstance(data, dict):
            spec = msgspec.convert(data, Spec)
        elif isinstance(data, bytes | bytearray | memoryview | str):
            spec = _DECODER.decode(data)
        else:
            raise SpecError("$", "a spec must be JSON text or a dict", type(data).__name__)
    except msgspec.ValidationError as err:
        raise _located_error(str(err), _document(data)) from None
    except msgspec.DecodeError as err:
        raise SpecError("$", f"not valid JSON: {err}", show_value=False) from None
    except RecursionError:
        raise SpecError("$", "nested too deeply to be a runtime spec", show_value=False) from None
    validate_spec(spec)
    return spec


def _document(data: Any) -> Any:
    """The untyped JSON document, to look a bad value up in; ``_MISSING`` when unreadable.

    Typed decoding stops at the first wrong type, before it would see that the
    rest of the text is not JSON at all (``b'0\\x00'``): parsing again may fail.
    """
    if isinstance(data, dict):
        return data
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return _MISSING


def encode_spec(spec: Spec) -> bytes:
    """Encode ``spec`` as ``config.json`` bytes (camelCase keys, unset fields left out)."""
    return _ENCODER.encode(spec)


def _located_error(message: str, document: Any) -> SpecError:
    """A :class:`SpecError` from a msgspec validation message, with the value looked up."""
    match = _LOCATED.match(message)
    assert match is not None  # the pattern matches any string
    problem, path = match["problem"], match["path"] or "$"
    unknown = _UNKNOWN_FIELD.match(problem)
    if unknown:
        path = f"{path}.{unknown['name']}"
        if path.startswith("$.windows."):
            problem = "not supported in a Linux spec (only layerFolders and network)"
        else:
            problem = "unknown field"
        path, value = _resolve(document, path)
        return SpecError(path, problem, value, show_value=value is not _MISSING)
    missing = _MISSING_FIELD.match(problem)
    if missing:
        return SpecError(f"{path}.{missing['name']}", "required field is missing", show_value=False)
    path, value = _resolve(document, path)
    problem = problem[0].lower() + problem[1:]
    if value is _MISSING:
        return SpecError(path, problem, show_value=False)
    return SpecError(path, problem, value)


def _resolve(document: Any, path: str) -> tuple[str, Any]:
    """``path`` with dict keys filled in where they can be found, and the value there.

    msgspec writes a dict key as ``[...]``.  In the spec's string maps
    (annotations, sysctl, unified) the culprit is the first non-string value;
    in the maps of objects (rdma, timeOffsets, netDevices) this picks the first
    entry, which may not be the bad one: the path then keeps a real key at least.
    """
    value = document
    resolved = "$"
    for key, index in _PATH_STEP.findall(path[1:]):
        if key and isinstance(value, dict) and key in value:
            value = value[key]
            resolved += f".{key}"
        elif index == "..." and isinstance(value, dict):
            culprit = next((k for k, v in value.items() if not isinstance(v, str)), None)
            if culprit is None:
                return path, _MISSING
            value = value[culprit]
            resolved += f"[{culprit!r}]"
        elif index and index != "..." and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
            resolved += f"[{index}]"
        else:
            return path, _MISSING
    return resolved, value
