"""hcsoci.relay.copy: descriptor to descriptor when it can, through the objects otherwise."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hcsoci import relay

pytestmark = pytest.mark.usefixtures("no_leaks")

DATA = os.urandom(3 << 20)


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="hcsoci-t-") as path:
        yield path


@pytest.fixture
def count_kernel_moves(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Bytes moved by os.splice / os.sendfile / os.readv (the real calls, counted)."""
    moved = {"splice": 0, "sendfile": 0, "readv": 0, "readv buffers": 0}
    real_splice, real_sendfile, real_readv = os.splice, os.sendfile, os.readv
    buffers: set[int] = set()

    def splice(*args: Any, **kwargs: Any) -> int:
        n = real_splice(*args, **kwargs)
        moved["splice"] += n
        return n

    def sendfile(*args: Any, **kwargs: Any) -> int:
        n = real_sendfile(*args, **kwargs)
        moved["sendfile"] += n
        return n

    def readv(fd: int, views: list[memoryview], /) -> int:
        n = real_readv(fd, views)
        moved["readv"] += n
        buffers.update(id(view.obj) for view in views)
        moved["readv buffers"] = len(buffers)
        return n

    monkeypatch.setattr(os, "splice", splice)
    monkeypatch.setattr(os, "sendfile", sendfile)
    monkeypatch.setattr(os, "readv", readv)
    return moved


def _feed(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with io.FileIO(fd, "wb") as sink:
            sink.write(data)

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _drain(fd: int) -> tuple[threading.Thread, list[bytes]]:
    """Read ``fd`` to its end in a thread; the list gets what was read."""
    received: list[bytes] = []

    def drain() -> None:
        with io.FileIO(fd, "rb") as pipe:
            received.append(pipe.readall())

    thread = threading.Thread(target=drain)
    thread.start()
    return thread, received


def test_pipe_to_file_goes_through_one_reused_buffer(
    tmp: str, count_kernel_moves: dict[str, int]
) -> None:
    """readv/write, not splice: splice into the page cache measured slower (docs/cmd.md)."""
    read_end, write_end = os.pipe()
    feeder = _feed(write_end, DATA)
    with io.FileIO(read_end, "rb") as src, open(os.path.join(tmp, "out"), "wb") as dst:
        dst.write(b"head:")  # buffered by the writer: must come first
        assert relay.copy(dst, src) == len(DATA)
    feeder.join()
    with open(os.path.join(tmp, "out"), "rb") as result:
        assert result.read() == b"head:" + DATA
    assert count_kernel_moves["splice"] == 0
    assert count_kernel_moves["readv"] == len(DATA)
    # The first, small buffer and the full-size one it grows into: no buffer per chunk.
    assert count_kernel_moves["readv buffers"] <= 2


def test_pipe_to_pipe_is_spliced(count_kernel_moves: dict[str, int]) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    feeder = _feed(in_write, DATA)
    drainer, received = _drain(out_read)
    with io.FileIO(in_read, "rb") as src, io.FileIO(out_write, "wb") as dst:
        assert relay.copy(dst, src) == len(DATA)
    feeder.join()
    drainer.join()
    assert received == [DATA]
    assert count_kernel_moves["splice"] == len(DATA)


def test_file_to_pipe_keeps_what_the_reader_buffered(
    tmp: str, count_kernel_moves: dict[str, int]
) -> None:
    path = os.path.join(tmp, "in")
    with open(path, "wb") as f:
        f.write(DATA)
    read_end, write_end = os.pipe()
    drainer, received = _drain(read_end)
    with open(path, "rb") as src, io.FileIO(write_end, "wb") as dst:
        assert src.read(10) == DATA[:10]  # the reader now holds read-ahead data
        assert relay.copy(dst, src) == len(DATA) - 10
    drainer.join()
    assert received == [DATA[10:]]
    assert count_kernel_moves["splice"] > 0


def test_file_to_socket_is_sent(tmp: str, count_kernel_moves: dict[str, int]) -> None:
    path = os.path.join(tmp, "in")
    with open(path, "wb") as f:
        f.write(DATA)
    left, right = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while chunk := right.recv(1 << 20):
            received.extend(chunk)

    drainer = threading.Thread(target=drain)
    drainer.start()
    with open(path, "rb", buffering=0) as src, left:
        assert relay.copy(left.makefile("wb", buffering=0), src) == len(DATA)
        left.shutdown(socket.SHUT_WR)
    drainer.join()
    right.close()
    assert bytes(received) == DATA
    assert count_kernel_moves["sendfile"] == len(DATA)


def test_python_objects_go_through_a_buffer(count_kernel_moves: dict[str, int]) -> None:
    dst = io.BytesIO()
    assert relay.copy(dst, io.BytesIO(DATA)) == len(DATA)
    assert dst.getvalue() == DATA
    assert count_kernel_moves["splice"] == count_kernel_moves["sendfile"] == 0


class _KeepingWriter:
    """A duck-typed writer that keeps what it is given (and returns None)."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []

    def write(self, data: Any) -> None:
        self.chunks.append(data)


def test_writers_that_keep_their_argument_get_their_own_bytes() -> None:
    dst = _KeepingWriter()
    relay.copy(dst, io.BytesIO(DATA))
    assert b"".join(dst.chunks) == DATA
    assert all(isinstance(chunk, bytes) for chunk in dst.chunks)


class _ReadOnly:
    """A duck-typed reader with read() only."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(min(size, 1000))


def test_readers_with_only_read() -> None:
    dst = io.BytesIO()
    assert relay.copy(dst, _ReadOnly(DATA)) == len(DATA)
    assert dst.getvalue() == DATA


class _Trickle(io.RawIOBase):
    """A raw writer that takes at most 7 bytes per call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data[:7])
        self.data.extend(chunk)
        return len(chunk)


def test_partial_writes_are_completed() -> None:
    dst = _Trickle()
    relay.copy(dst, io.BytesIO(DATA[:10000]))
    assert bytes(dst.data) == DATA[:10000]


def test_progress_counts_until_an_error() -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.calls += 1
            if self.calls > 1:
                raise OSError(28, "full (simulated)")
            return len(data)

    progress = relay.Progress()
    with pytest.raises(OSError, match="simulated"):
        relay.copy(Broken(), io.BytesIO(DATA), progress)
    assert progress.bytes == 256 * 1024  # the first buffer made it
    assert progress.sink_failed


def test_a_failing_source_is_not_the_sinks_failure() -> None:
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError(5, "read failed (simulated)")

    progress = relay.Progress()
    with pytest.raises(OSError, match="simulated"):
        relay.copy(io.BytesIO(), Failing(), progress)
    assert not progress.sink_failed


def test_a_reader_gone_from_a_pipe_is_the_sinks_failure() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    progress = relay.Progress()
    with io.FileIO(write_end, "wb") as dst, pytest.raises(BrokenPipeError):
        relay.copy(dst, io.BytesIO(DATA), progress)
    assert progress.sink_failed


def test_a_terminal_is_read_not_spliced_and_ends_at_eio(
    count_kernel_moves: dict[str, int],
) -> None:
    """A pty master reads EIO once its slave is closed: the end of the output.
    Never spliced into a pipe: the splice would hold the pipe while waiting."""
    master, slave = os.openpty()
    out_read, out_write = os.pipe()
    drainer, received = _drain(out_read)
    os.write(slave, b"from the terminal\n")
    os.close(slave)
    with io.FileIO(master, "rb") as src, io.FileIO(out_write, "wb") as dst:
        relay.copy(dst, src)
    drainer.join()
    assert received == [b"from the terminal\r\n"]
    assert count_kernel_moves["splice"] == 0


def test_handover_fd_gives_only_descriptors_a_process_can_use_as_they_are(tmp: str) -> None:
    assert relay.handover_fd(io.BytesIO(), reading=False) is None
    path = os.path.join(tmp, "file")
    with open(path, "wb") as writer:
        writer.write(b"buffered")
        assert relay.handover_fd(writer, reading=False) == writer.fileno()
        assert os.path.getsize(path) == len(b"buffered")  # flushed first
    with open(path, "rb") as reader:
        assert relay.handover_fd(reader, reading=True) == reader.fileno()
        reader.read(1)  # the rest is now read ahead into the reader's buffer
        assert relay.handover_fd(reader, reading=True) is None
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        with io.FileIO(write_end, "wb", closefd=False) as pipe:
            assert relay.handover_fd(pipe, reading=False) is None  # the process would see EAGAIN
    finally:
        os.close(read_end)
        os.close(write_end)


def test_non_blocking_source_pipe_is_waited_for(tmp: str) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    feeder = _feed(write_end, DATA)
    with io.FileIO(read_end, "rb") as src:
        dst = io.BytesIO()
        assert relay.copy(dst, src) == len(DATA)
    feeder.join()
    assert dst.getvalue() == DATA


@pytest.mark.parametrize("sink", ["file", "pipe"])
def test_closing_the_source_stops_a_copy_that_never_runs_dry(tmp: str, sink: str) -> None:
    """The copy works on private duplicates: a close of the stream must still end it."""
    read_end, write_end = os.pipe()
    stop_feeding = threading.Event()

    def feed() -> None:
        with io.FileIO(write_end, "wb") as pipe:
            while not stop_feeding.wait(0.001):
                pipe.write(b"x" * 65536)

    feeder = threading.Thread(target=feed)
    feeder.start()
    drainer: threading.Thread | None = None
    if sink == "file":
        dst: io.RawIOBase = io.FileIO(os.path.join(tmp, "out"), "wb")
    else:
        out_read, out_write = os.pipe()
        drainer, _ = _drain(out_read)
        dst = io.FileIO(out_write, "wb")
    src = io.FileIO(read_end, "rb")
    progress = relay.Progress()
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            relay.copy(dst, src, progress)
        except BaseException as err:
            errors.append(err)

    copier = threading.Thread(target=copy)
    copier.start()
    try:
        while progress.bytes < 1 << 20:
            copier.join(0.01)
        src.close()
        copier.join(10)
        assert not copier.is_alive(), "the copy went on after its source was closed"
        assert [type(e) for e in errors] == [ValueError]
    finally:
        stop_feeding.set()
        feeder.join()
        copier.join()
        dst.close()
        if drainer is not None:
            drainer.join()
