"""Shared test setup: every test session gets its own state root.

Family-specific fixtures live in plugin modules next to the tests
(``tests/fixtures_*.py``) listed in ``pytest_plugins`` below.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

pytest_plugins: list[str] = [
    "fixtures_cmd",
    "fixtures_hns",
    "fixtures_images",
    "fixtures_containers",
    "fixtures_uvm",
]


@pytest.fixture(scope="session", autouse=True)
def state_root() -> Iterator[str]:
    """A private ``HCSOCI_ROOT`` for the whole session, removed afterwards."""
    root = tempfile.mkdtemp(prefix="hcsoci-test-", dir="/run")
    old = os.environ.get("HCSOCI_ROOT")
    os.environ["HCSOCI_ROOT"] = root
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("HCSOCI_ROOT", None)
        else:
            os.environ["HCSOCI_ROOT"] = old
        shutil.rmtree(root, ignore_errors=True)
