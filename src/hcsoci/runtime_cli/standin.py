"""The host stand-in of a process in a utility VM: what the engine's ``--pid-file`` names.

``hcsoci-runc --isolation vm create`` (and ``exec``) starts one per guest
process, ``python -m hcsoci.runtime_cli.standin CONFIG`` (CONFIG a JSON
object).  The engine's shim (or conmon) reaps it as subreaper, signals it, and
takes its exit status for the container's: the stand-in

* holds the engine's stdio (or the host pty's slave, whose master went over
  ``--console-socket``) and hands them to the VM's controller with the
  ``exec`` request (``SCM_RIGHTS``), which relays them to and from the guest;
* for a container's init, waits on the listening socket ``create`` bound
  (``listen_fd``) until ``start`` connects, then starts the init and answers
  ``ok`` (or ``error MESSAGE``): runc's create/start split;
* forwards the signals it can catch to the guest process (SIGKILL it cannot:
  the request asks the controller to kill the guest process when the
  stand-in's connection drops);
* exits with the guest process's exit code (``128 + N`` for signal N), or,
  when the controller went away, 255 with one line on its stderr.

It reports on ``ready_fd`` (``ok`` or ``error MESSAGE``) once an exec
process runs, so ``exec --detach`` can fail with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import termios
from pathlib import Path
from typing import Any

from hcsoci.uvm.channel import recv_frame
from hcsoci.uvm.remote import ControllerClient, ControllerError

__all__ = ["LOST_CONTROLLER", "main"]

LOST_CONTROLLER = 255
"""The stand-in's exit status when the controller went away while the process ran."""

_FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def _say(fd: int, line: str) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, (" ".join(line.split()) + "\n").encode())


def _window(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal ``fd`` (0, 0 when unknown)."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return 0, 0
    return cols, rows


class StandIn:
    """One guest process's stand-in (see the module)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.client = ControllerClient(str(config["vm"]), Path(str(config["socket"])))
        self.container_id = str(config["id"])
        self.process: dict[str, Any] | None = config.get("process")
        self.tty = bool(config.get("tty"))
        self.token = ""
        self.pending: list[int] = []

    def on_signal(self, number: int, _frame: object) -> None:
        if not self.token:
            self.pending.append(number)
            return
        self._forward(number)

    def _forward(self, number: int) -> None:
        with contextlib.suppress(Exception):
            self.client.call("signal_process", token=self.token, signal=number)

    def on_winch(self, _number: int, _frame: object) -> None:
        if self.token:
            self._resize()

    def _resize(self) -> None:
        cols, rows = _window(0)
        if cols and rows:
            with contextlib.suppress(Exception):
                self.client.call("resize", token=self.token, width=cols, height=rows)

    def launch(self) -> socket.socket:
        """Send the ``exec`` request with our stdio; the connection the exit will come on."""
        streams = [True, True, not self.tty]
        fds = [0, 1] if self.tty else [0, 1, 2]
        sock = self.client.connect()
        try:
            request = {
                "op": "exec",
                "id": self.container_id,
                "process": self.process,
                "streams": streams,
                "kill_on_disconnect": True,
            }
            reply = self.client.request(sock, request, fds)
        except BaseException:
            sock.close()
            raise
        self.token = str(reply["token"])
        if self.tty:
            self._resize()
        # The controller holds the streams now: ours must not keep a reader's pipe open.
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(quiet, fd)
        os.close(quiet)
        for number in self.pending:
            self._forward(number)
        self.pending.clear()
        return sock

    def wait_exit(self, sock: socket.socket) -> int:
        """The exit code the controller reports for the process."""
        try:
            end = recv_frame(sock)
        except Exception as err:
            end = None
            reason = str(err)
        else:
            reason = "it closed the connection"
        if end is None or end.get("event") != "exit":
            if end is not None:
                reason = str(end.get("error", reason))
            sys.stderr.write(
                f"hcsoci-runc: lost the VM controller of utility VM {self.client.vm_id} "
                f"({reason}); `hcsoci gc` releases what it left\n"
            )
            return LOST_CONTROLLER
        code = int(end.get("exit_code", -1))
        return code if 0 <= code <= 255 else LOST_CONTROLLER


def _wait_for_start(listen_fd: int) -> socket.socket:
    """The ``start`` call's connection (it sent ``start``)."""
    listener = socket.socket(fileno=listen_fd)
    while True:
        conn, _ = listener.accept()
        conn.settimeout(10.0)
        try:
            word = conn.recv(16)
        except OSError:
            conn.close()
            continue
        if word.strip() == b"start":
            listener.close()
            conn.settimeout(None)
            return conn
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in whose configuration is the one JSON argument."""
    args = sys.argv[1:] if argv is None else argv
    config = json.loads(args[0])
    standin = StandIn(config)
    ready_fd = int(config.get("ready_fd", -1))
    listen_fd = int(config.get("listen_fd", -1))
    start_path = str(config.get("start_socket", ""))
    if standin.tty:
        with contextlib.suppress(OSError):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    if listen_fd >= 0:
        # Created, not started: a signal ends the stand-in (nothing runs in the guest yet).
        for number in _FORWARDED:
            signal.signal(number, signal.SIG_DFL)
        conn = _wait_for_start(listen_fd)
    else:
        conn = None
    for number in _FORWARDED:
        signal.signal(number, standin.on_signal)
    if standin.tty:
        signal.signal(signal.SIGWINCH, standin.on_winch)
    try:
        sock = standin.launch()
    except Exception as err:
        message = str(err) or type(err).__name__
        _say(ready_fd, f"error {message}")
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(f"error {' '.join(message.split())}\n".encode())
        sys.stderr.write(f"hcsoci-runc: {message}\n")
        return LOST_CONTROLLER if isinstance(err, ControllerError) else 1
    if start_path:
        with contextlib.suppress(OSError):
            os.unlink(start_path)
    _say(ready_fd, "ok")
    if ready_fd >= 0:
        os.close(ready_fd)
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.sendall(b"ok\n")
        conn.close()
    return standin.wait_exit(sock)


if __name__ == "__main__":
    sys.exit(main())
