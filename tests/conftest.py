"""Shared test setup: every test session gets its own state root.

Family-specific fixtures live in plugin modules next to the tests
(``tests/fixtures_*.py``) listed in ``pytest_plugins`` below.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from typing import Any, TextIO

import pytest

pytest_plugins: list[str] = [
    "fixtures_cmd",
    "fixtures_hns",
    "fixtures_images",
    "fixtures_containers",
    "fixtures_uvm",
    "fixtures_engines",
]


HANG_FUSE = 900.0
"""Seconds one test may take, teardown included, before the run ends with every
thread's stack on stderr.  pytest-timeout (300 s, pyproject.toml) fails a stuck
test first, by a signal, so that its teardown still releases what it made; this
fuse is for a teardown that hangs as well (a frozen guest), which would hold
the run until CI's own limit."""

_stderr: TextIO | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _stderr
    _stderr = os.fdopen(os.dup(2), "w")  # the real stderr: capture is off during configure


def pytest_unconfigure(config: pytest.Config) -> None:
    if _stderr is not None:
        _stderr.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Generator[None, Any, None]:
    faulthandler.dump_traceback_later(HANG_FUSE, exit=True, file=_stderr or 2)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session", autouse=True)
def state_root() -> Iterator[str]:
    """A private ``HCSOCI_ROOT`` for the whole session, removed afterwards."""
    root = tempfile.mkdtemp(prefix="hcsoci-test-", dir="/run")
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("HCSOCI_ROOT", root)
            yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
