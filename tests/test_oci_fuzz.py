"""``oci.decode_spec`` on anything at all: a ``SpecError`` naming a JSON path, or a spec.

Garbage bytes, truncated JSON, non-finite numbers, deep nesting and wrong types
anywhere in a real spec must never escape as a raw ``msgspec`` error, a
``RecursionError`` or any other exception.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcsoci import oci

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC: dict[str, Any] = json.loads(oci.encode_spec(oci.default_spec(["sh"])))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def decodes_or_names_a_path(data: Any) -> None:
    try:
        oci.decode_spec(data)
    except oci.SpecError as err:
        assert str(err).startswith("invalid OCI spec: $"), str(err)


@FUZZ
@given(st.binary(max_size=200))
def test_garbage_bytes(data: bytes) -> None:
    decodes_or_names_a_path(data)


@FUZZ
@given(st.integers(min_value=0, max_value=len(oci.encode_spec(oci.default_spec(["sh"])))))
def test_truncated_json(cut: int) -> None:
    decodes_or_names_a_path(oci.encode_spec(oci.default_spec(["sh"]))[:cut])


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


ALL_PATHS = paths(SPEC)[1:]


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@FUZZ
@given(st.sampled_from(ALL_PATHS), json_values)
def test_wrong_types_anywhere(path: tuple[Any, ...], value: Any) -> None:
    document = replaced(SPEC, path, value)
    decodes_or_names_a_path(document)  # as a dict
    decodes_or_names_a_path(json.dumps(document).encode())  # and as JSON text


@FUZZ
@given(st.sampled_from(ALL_PATHS), st.sampled_from(["Infinity", "-Infinity", "NaN", "1e999"]))
def test_non_finite_numbers(path: tuple[Any, ...], number: str) -> None:
    marker = "__NUMBER__"
    text = json.dumps(replaced(SPEC, path, marker)).replace(f'"{marker}"', number)
    decodes_or_names_a_path(text.encode())


def test_deep_nesting() -> None:
    for depth in (1000, 100_000):
        decodes_or_names_a_path(b"[" * depth + b"]" * depth)
        decodes_or_names_a_path(b'{"annotations": ' + b"[" * depth + b"]" * depth + b"}")
        nested: Any = "x"
        for _ in range(min(depth, 5000)):
            nested = {"a": nested}
        decodes_or_names_a_path({"ociVersion": "1.0.2", "annotations": nested})


def test_the_seed_compatibility_cases() -> None:
    """The two inputs that used to raise a raw ``msgspec.DecodeError``."""
    for data in (b"0\x00", b'{"ociVersion": null, "mounts": Infinity}'):
        decodes_or_names_a_path(data)
