"""A blocking QMP session for threaded callers, on top of the ``qemu.qmp`` library.

``qemu.qmp`` is asyncio-only.  Each session runs its own event loop on one
thread; callers from any thread submit commands to it and wait.  The thread
ends when the session is closed (the VM's ``close``/``terminate`` does that),
so no thread outlives its VM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from qemu.qmp import ConnectError, QMPClient, QMPError
from qemu.qmp.qmp_client import GreetingError

from hcsoci.errors import HcsociError

__all__ = ["QMPCommandError", "QMPSession"]

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], None]


class QMPCommandError(HcsociError):
    """QEMU refused a QMP command, or the monitor could not be reached."""


class QMPSession:
    """One QMP connection, usable from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._handlers: list[EventHandler] = []
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._pump: concurrent.futures.Future[None] | None = None
        self._closed = False

    def _call(self, coroutine: Any, timeout: float | None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def connect(self, path: str, timeout: float = 10.0) -> None:
        """Connect to the monitor's unix socket and start delivering events.

        QEMU can send an event before its greeting (a ``MIGRATION`` event while
        it loads a template's state races a client's connect), which fails
        ``qemu.qmp``'s handshake; the connection is then made anew, until
        ``timeout``: a new connection starts with the greeting.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call(self._client.connect(path), max(0.1, deadline - time.monotonic()))
                break
            except (QMPError, OSError, concurrent.futures.TimeoutError) as err:
                raced = isinstance(err, ConnectError) and isinstance(err.exc, GreetingError)
                if raced and time.monotonic() < deadline:
                    log.debug("QMP %s: an event before the greeting; connecting anew", self.name)
                    continue
                raise QMPCommandError(f"QMP {self.name}: cannot connect to {path}: {err}") from err
        self._pump = asyncio.run_coroutine_threadsafe(self._pump_events(), self._loop)

    def on_event(self, handler: EventHandler) -> None:
        """Call ``handler(name, data)`` for each QMP event, on the session's thread."""
        self._handlers.append(handler)

    async def _pump_events(self) -> None:
        while True:
            event = await self._client.events.get()
            for handler in list(self._handlers):
                try:
                    data: dict[str, Any] = dict(event.get("data") or {})  # type: ignore[call-overload]
                    handler(str(event["event"]), data)
                except Exception:  # one bad handler must not stop event delivery
                    log.exception("QMP event handler failed")

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Run one command; raises :class:`QMPCommandError` with QEMU's message."""
        if self._closed:
            raise QMPCommandError(f"QMP {self.name}: session closed")
        try:
            return self._call(self._client.execute(command, arguments), timeout)
        except concurrent.futures.TimeoutError:
            raise QMPCommandError(
                f"QMP {self.name}: {command} got no answer within {timeout:g} s"
            ) from None
        except (QMPError, OSError, EOFError) as err:
            raise QMPCommandError(f"QMP {self.name}: {command}: {err}") from err

    def pass_fd(self, fd: int, name: str, timeout: float = 10.0) -> None:
        """Hand QEMU a copy of descriptor ``fd`` (QMP ``getfd``), to be named ``fd:<name>``."""
        if self._closed:
            raise QMPCommandError(f"QMP {self.name}: session closed")

        async def send() -> None:
            self._client.send_fd_scm(fd)
            await self._client.execute("getfd", {"fdname": name})

        try:
            self._call(send(), timeout)
        except (QMPError, OSError, EOFError, concurrent.futures.TimeoutError) as err:
            raise QMPCommandError(f"QMP {self.name}: getfd: {err}") from err

    def close(self) -> None:
        """Disconnect and stop the session's thread."""
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        try:
            self._call(self._client.disconnect(), 5.0)
        except Exception as err:  # the peer may be gone already
            log.debug("QMP disconnect", extra={"error": str(err)})
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
            self._loop.close()
