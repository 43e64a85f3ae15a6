"""Fixtures for the Cmd / LocalHost / context tests: a host, and leak checks."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from hcsoci import LocalHost, context


def open_fds() -> set[str]:
    """This process's open descriptors, as ``fd -> target`` lines."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            fds.add(f"{name} -> {os.readlink(f'/proc/self/fd/{name}')}")
    return fds


def child_pids() -> set[int]:
    """Children of every thread of this process (live or zombie)."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as children:
            pids.update(int(pid) for pid in children.read().split())
    return pids


@dataclass
class Snapshot:
    fds: set[str]
    threads: set[threading.Thread]
    children: set[int]


def snapshot() -> Snapshot:
    return Snapshot(open_fds(), set(threading.enumerate()), child_pids())


def assert_nothing_left(before: Snapshot, *, settle: float = 5.0) -> None:
    """Fail unless descriptors, threads and children are back to ``before``.

    Relay threads end a moment after the command: poll for up to ``settle`` s.
    """
    deadline = time.monotonic() + settle
    while True:
        after = snapshot()
        clean = (
            after.fds <= before.fds
            and after.threads <= before.threads
            and after.children <= before.children
        )
        if clean or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert after.fds - before.fds == set(), "descriptors left open"
    assert after.threads - before.threads == set(), "threads left running"
    assert after.children - before.children == set(), "child processes left"


@pytest.fixture
def host() -> LocalHost:
    return LocalHost()


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """The test must leave no descriptor, thread or child process behind."""
    # Long-lived helpers started on first use: the deadline timer's thread.
    _, cancel = context.with_timeout(context.background(), 3600)
    cancel()
    before = snapshot()
    yield
    assert_nothing_left(before)


@pytest.fixture
def token() -> str:
    """A short random name for processes and files this test makes."""
    return "hcsoci-t-" + secrets.token_hex(4)


@pytest.fixture
def kill_tagged() -> Iterator[Callable[[str], None]]:
    """``kill_tagged(tag)`` SIGKILLs every process whose command line or environment
    has ``tag`` (start strays as ``HCSOCI_TAG=tag cmd &``); it runs again at
    teardown for each tag used, so they never outlive the test."""
    tags: list[str] = []

    def kill(tag: str) -> None:
        if tag not in tags:
            tags.append(tag)
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read()
            except OSError:
                continue
            if tag.encode() in cmdline or tag.encode() in environ:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    yield kill
    for tag in tags:
        kill(tag)
