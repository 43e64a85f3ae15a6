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
import logging
import os
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

log = logging.getLogger(__name__)


class ContextError(HcsociError):
    """Why a context is done."""


class Canceled(ContextError):
    """The context was cancelled (``context.Canceled``)."""

    def __init__(self, message: str = "context canceled") -> None:
        super().__init__(message)


class DeadlineExceeded(ContextError, TimeoutError):
    """The context's deadline passed (``context.DeadlineExceeded``)."""

    def __init__(self, message: str = "context deadline exceeded") -> None:
        super().__init__(message)


class Context:
    """A cancellation signal shared by a tree of operations.

    Make one with :func:`with_cancel` or :func:`with_timeout`; the root is
    :func:`background`.  Cancelling a context cancels all its descendants.
    """

    def __init__(self, parent: Context | None = None, deadline: float | None = None) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._err: ContextError | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._stop_parent: Callable[[], bool] = _never
        self._next_id = itertools.count()
        self._scheduled = False  # has an entry in the deadline timer's heap
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

            stop = parent.after_done(on_parent_done)
            if self._err is None:
                self._stop_parent = stop
                # A child dropped without being cancelled must not stay registered
                # with a long-lived parent forever.
                weakref.finalize(self, stop)

    def done(self) -> threading.Event:
        """An event that is set once the context is cancelled or expired.

        Treat it as read-only: ``ctx.done().wait(timeout)`` or ``.is_set()``.
        """
        return self._done

    def err(self) -> ContextError | None:
        """None while the context is live; then :class:`Canceled` or :class:`DeadlineExceeded`."""
        return self._err

    def check(self) -> None:
        """Raise :meth:`err` if the context is done: the test before starting work.

        The raised error is a fresh one of the same type and message: one shared
        instance raised from several threads would gather their tracebacks.
        """
        err = self._err
        if err is not None:
            raise type(err)(str(err))

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
        Callbacks run in the thread that cancels the context (or the deadline
        timer's thread): keep them short and non-blocking.  An exception from a
        callback is logged, and does not stop the other callbacks.
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
        return _never

    def _finish(self, err: ContextError) -> None:
        with self._lock:
            if self._err is not None:
                return
            self._err = err
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        self._done.set()
        self._stop_parent()  # a parent must not keep its finished children alive
        if self._scheduled:
            _TIMER.discard()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("context after_done callback %r failed", callback)

    def __repr__(self) -> str:
        state = "live" if self._err is None else str(self._err)
        return f"<Context {state} deadline={self.deadline}>"


def _never() -> bool:
    return False


class _Background(Context):
    """The root context: never done."""

    def after_done(self, callback: Callable[[], None]) -> Callable[[], bool]:
        return _never


_BACKGROUND = _Background()


def background() -> Context:
    """The empty root context: never cancelled, no deadline."""
    return _BACKGROUND


def with_cancel(parent: Context) -> tuple[Context, Callable[[], None]]:
    """A child of ``parent`` and a function that cancels it (call it when done)."""
    ctx = Context(parent)
    return ctx, lambda: ctx._finish(Canceled())


def with_timeout(parent: Context, seconds: float) -> tuple[Context, Callable[[], None]]:
    """A child of ``parent`` that expires after ``seconds``, and its cancel function.

    A deadline already in the past (``seconds <= 0``) makes a context that is
    done on return.
    """
    ctx = Context(parent, deadline=time.monotonic() + seconds)
    if ctx.err() is None:
        if seconds <= 0:
            ctx._finish(DeadlineExceeded())
        else:
            _TIMER.schedule(ctx)
    return ctx, lambda: ctx._finish(Canceled())


class _DeadlineTimer:
    """One daemon thread that expires every context with a deadline.

    Contexts are held weakly.  Entries of contexts finished early stay in the
    heap until they are popped; once they make up most of it, it is rebuilt, so
    many short-lived timeouts with long deadlines do not pile up.
    """

    _COMPACT_MIN = 64

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[Context]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._finished_early = 0

    def schedule(self, ctx: Context) -> None:
        assert ctx.deadline is not None
        with self._cond:
            ctx._scheduled = True
            heapq.heappush(self._heap, (ctx.deadline, next(self._seq), weakref.ref(ctx)))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="hcsoci-context-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def discard(self) -> None:
        """Note that a context with a deadline finished (its heap entry is now dead)."""
        with self._cond:
            self._finished_early += 1
            if len(self._heap) >= self._COMPACT_MIN and self._finished_early * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if _live(entry[2])]
                heapq.heapify(self._heap)
                self._finished_early = 0

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
                ctx._scheduled = False  # its entry is gone from the heap
                ctx._finish(DeadlineExceeded())

    def _after_fork_in_child(self) -> None:
        # The timer thread does not exist in a forked child, and its lock may have
        # been held at fork time: start over (the heap is still valid).
        self._cond = threading.Condition()
        self._thread = None
        if self._heap:
            self._thread = threading.Thread(
                target=self._run, name="hcsoci-context-deadlines", daemon=True
            )
            self._thread.start()


def _live(ref: weakref.ref[Context]) -> bool:
    ctx = ref()
    return ctx is not None and ctx.err() is None


_TIMER = _DeadlineTimer()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_TIMER._after_fork_in_child)
