"""hcsoci.gcs.terminal: setting the size of the terminal another process holds."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import termios
import time
from pathlib import Path

from hcsoci.gcs.terminal import resize_held_terminal


def _size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def test_the_pty_a_process_holds_gets_the_size() -> None:
    master, slave = os.openpty()
    child = subprocess.Popen(["sleep", "30"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    pidfd = os.pidfd_open(child.pid)
    try:
        assert resize_held_terminal(pidfd, child.pid, 132, 50)
        assert _size(master) == (50, 132)
    finally:
        child.kill()
        child.wait()
        os.close(pidfd)
        os.close(master)


def test_a_fifo_or_a_file_in_place_of_the_terminal_is_left_alone(tmp_path: Path) -> None:
    """A hostile process's stdio is never opened as a device: no block, no ioctl."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO's open would block without one
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with plain.open("rb") as file:
        child = subprocess.Popen(["sleep", "30"], stdin=reader, stdout=file, stderr=file)
    os.close(reader)
    pidfd = os.pidfd_open(child.pid)
    try:
        started = time.monotonic()
        assert not resize_held_terminal(pidfd, child.pid, 80, 24)
        assert time.monotonic() - started < 5
    finally:
        child.kill()
        child.wait()
        os.close(pidfd)


def test_a_process_that_is_gone_is_not_touched() -> None:
    master, slave = os.openpty()
    child = subprocess.Popen(["true"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    pidfd = os.pidfd_open(child.pid)
    try:
        child.wait()
        assert not resize_held_terminal(pidfd, child.pid, 132, 50)
    finally:
        os.close(pidfd)
        os.close(master)
