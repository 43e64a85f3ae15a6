"""Go-style cancellation contexts for threaded code.

A context carries a cancellation signal and, optionally, a deadline.  Children
are cancelled together with their parent.  No thread is started per context:
deadlines are served by one shared timer thread, and :meth:`Context.after_done`
lets a caller react to cancellation without a watcher thread of its own.

>>> ctx, cancel = with_timeout(background(), 5.0)
>>> ctx.done().wait(0.01)
False
>>> cancel()
>>> isinstance(ctx.err(), Canceled)
True
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Callable

from hcsoci.errors import HcsociError

__all__ = [
    "Canceled",
    "Context",
    "ContextError",
    "DeadlineExceeded",
    "background",
    "with_cancel",
    "with_timeout",
]


class ContextError(HcsociError):
    """Why a context is done."""


class Canceled(ContextError):
    """The context was cancelled (``context.Canceled``)."""

    def __init__(self) -> None:
        super().__init__("context canceled")


class DeadlineExceeded(ContextError, TimeoutError):
    """The context's deadline passed (``context.DeadlineExceeded``)."""

    def __init__(self) -> None:
        super().__init__("context deadline exceeded")


class Context:
    """A cancellation signal shared by a tree of operations."""

    def __init__(self, parent: Context | None = None, deadline: float | None = None) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._err: ContextError | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._stop_parent: Callable[[], bool] = lambda: False
        self._next_id = itertools.count()
        self.deadline: float | None
        """Monotonic time (``time.monotonic()``) at which the context expires, or None."""
        if parent is not None and parent.deadline is not None:
            deadline = parent.deadline if deadline is None else min(deadline, parent.deadline)
        self.deadline = deadline
        if parent is not None:
            me = weakref.ref(self)

            def on_parent_done() -> None:
                child = me()
                if child is not None:
                    child._finish(parent.err() or Canceled())

            self._stop_parent = parent.after_done(on_parent_done)

    def done(self) -> threading.Event:
        """An event that is set once the context is cancelled or expired.

        Treat it as read-only: ``ctx.done().wait(timeout)`` or ``.is_set()``.
        """
        return self._done

    def err(self) -> ContextError | None:
        """None while the context is live; then :class:`Canceled` or :class:`DeadlineExceeded`."""
        return self._err

    def remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def after_done(self, callback: Callable[[], None]) -> Callable[[], bool]:
        """Call ``callback`` (once, from some thread) when the context becomes done.

        If it is done already, the callback runs now, in this thread.  Returns a
        ``stop()`` function that unregisters the callback; it returns True when
        the callback had not run and now never will (Go's ``context.AfterFunc``).
        """
        with self._lock:
            if self._err is None:
                key = next(self._next_id)
                self._callbacks[key] = callback

                def stop() -> bool:
                    with self._lock:
                        return self._callbacks.pop(key, None) is not None

                return stop
        callback()
        return lambda: False

    def _finish(self, err: ContextError) -> None:
        with self._lock:
            if self._err is not None:
                return
            self._err = err
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        self._done.set()
        self._stop_parent()  # a parent must not keep its finished children alive
        for callback in callbacks:
            callback()

    def __repr__(self) -> str:
        state = "live" if self._err is None else str(self._err)
        return f"<Context {state} deadline={self.deadline}>"


class _Background(Context):
    """The root context: never done."""

    def after_done(self, callback: Callable[[], None]) -> Callable[[], bool]:
        return lambda: False


_BACKGROUND = _Background()


def background() -> Context:
    """The empty root context: never cancelled, no deadline."""
    return _BACKGROUND


def with_cancel(parent: Context) -> tuple[Context, Callable[[], None]]:
    """A child of ``parent`` and a function that cancels it."""
    ctx = Context(parent)
    return ctx, lambda: ctx._finish(Canceled())


def with_timeout(parent: Context, seconds: float) -> tuple[Context, Callable[[], None]]:
    """A child of ``parent`` that expires after ``seconds``, and its cancel function."""
    ctx = Context(parent, deadline=time.monotonic() + seconds)
    if ctx.deadline is not None:
        _TIMER.schedule(ctx)
    return ctx, lambda: ctx._finish(Canceled())


class _DeadlineTimer:
    """One daemon thread that expires every context with a deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[Context]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, ctx: Context) -> None:
        assert ctx.deadline is not None
        with self._cond:
            heapq.heappush(self._heap, (ctx.deadline, next(self._seq), weakref.ref(ctx)))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="hcsoci-context-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, ref = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            ctx = ref()
            if ctx is not None:
                ctx._finish(DeadlineExceeded())


_TIMER = _DeadlineTimer()
