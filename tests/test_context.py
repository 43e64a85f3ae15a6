"""hcsoci.context: cancellation trees, deadlines, after_done, and no thread per context."""

from __future__ import annotations

import gc
import logging
import threading
import time

import pytest

from hcsoci import context
from hcsoci.context import Canceled, ContextError, DeadlineExceeded, background


def test_background_is_never_done() -> None:
    ctx = background()
    assert ctx.err() is None
    assert not ctx.done().is_set()
    assert ctx.deadline is None
    assert ctx.remaining() is None
    assert ctx.after_done(lambda: None)() is False


def test_cancel_sets_done_and_canceled_once() -> None:
    ctx, cancel = context.with_cancel(background())
    assert ctx.err() is None and not ctx.done().is_set()
    cancel()
    assert ctx.done().wait(0)
    err = ctx.err()
    assert isinstance(err, Canceled) and isinstance(err, ContextError)
    assert str(err) == "context canceled"
    cancel()
    assert ctx.err() is err  # the first reason stays


def test_children_are_cancelled_with_their_parent_not_the_other_way() -> None:
    root, cancel_root = context.with_cancel(background())
    child, cancel_child = context.with_cancel(root)
    grandchild, _ = context.with_timeout(child, 3600)
    sibling, _ = context.with_cancel(root)
    cancel_child()
    assert isinstance(grandchild.err(), Canceled)
    assert root.err() is None and sibling.err() is None
    cancel_root()
    assert isinstance(sibling.err(), Canceled)


def test_child_of_a_done_parent_is_done_at_once() -> None:
    parent, cancel = context.with_cancel(background())
    cancel()
    child, _ = context.with_cancel(parent)
    assert child.done().is_set()
    assert isinstance(child.err(), Canceled)


def test_timeout_expires_with_deadline_exceeded() -> None:
    ctx, cancel = context.with_timeout(background(), 0.05)
    try:
        assert ctx.err() is None
        assert ctx.done().wait(10)
        err = ctx.err()
        assert isinstance(err, DeadlineExceeded) and isinstance(err, TimeoutError)
        assert ctx.remaining() == 0.0
    finally:
        cancel()
    assert isinstance(ctx.err(), DeadlineExceeded)  # cancel after expiry changes nothing


def test_deadline_in_the_past_is_done_on_return() -> None:
    ctx, _ = context.with_timeout(background(), 0)
    assert isinstance(ctx.err(), DeadlineExceeded)
    ctx, _ = context.with_timeout(background(), -5)
    assert isinstance(ctx.err(), DeadlineExceeded)


def test_children_inherit_the_earlier_deadline_and_its_error() -> None:
    parent, cancel_parent = context.with_timeout(background(), 0.05)
    child, cancel_child = context.with_timeout(parent, 3600)
    plain, _ = context.with_cancel(parent)
    try:
        assert child.deadline == parent.deadline == plain.deadline
        assert child.done().wait(10) and plain.done().wait(10)
        assert isinstance(child.err(), DeadlineExceeded)
        assert isinstance(plain.err(), DeadlineExceeded)
    finally:
        cancel_child()
        cancel_parent()
    shorter, cancel = context.with_timeout(context.with_timeout(background(), 3600)[0], 1)
    assert shorter.deadline is not None and shorter.remaining() is not None
    assert shorter.remaining() <= 1  # type: ignore[operator]
    cancel()


def test_after_done_runs_once_and_stop_unregisters() -> None:
    ctx, cancel = context.with_cancel(background())
    calls: list[str] = []
    ctx.after_done(lambda: calls.append("a"))
    stop_b = ctx.after_done(lambda: calls.append("b"))
    assert stop_b() is True  # had not run, now never will
    assert stop_b() is False
    cancel()
    cancel()
    assert calls == ["a"]
    stop_c = ctx.after_done(lambda: calls.append("c"))  # done already: runs now
    assert calls == ["a", "c"]
    assert stop_c() is False


def test_stop_after_the_callback_ran_returns_false() -> None:
    ctx, cancel = context.with_cancel(background())
    stop = ctx.after_done(lambda: None)
    cancel()
    assert stop() is False


def test_failing_callback_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx, cancel = context.with_cancel(background())
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    ctx.after_done(broken)
    ctx.after_done(lambda: calls.append(1))
    with caplog.at_level(logging.ERROR, logger="hcsoci.context"):
        cancel()
    assert calls == [1]
    assert any("boom" in (r.exc_text or "") for r in caplog.records)


def test_failing_callback_does_not_stop_the_deadline_timer() -> None:
    ctx, _ = context.with_timeout(background(), 0.01)

    def broken() -> None:
        raise RuntimeError("boom")

    ctx.after_done(broken)
    assert ctx.done().wait(10)
    later, cancel = context.with_timeout(background(), 0.01)
    try:
        assert later.done().wait(10), "the timer thread died with the callback"
    finally:
        cancel()


def test_after_done_callbacks_run_in_the_timer_thread_on_expiry() -> None:
    ctx, cancel = context.with_timeout(background(), 0.01)
    ran = threading.Event()
    threads: list[str] = []

    def record() -> None:
        threads.append(threading.current_thread().name)
        ran.set()

    ctx.after_done(record)
    try:
        assert ran.wait(10)
    finally:
        cancel()
    assert threads == ["hcsoci-context-deadlines"]


def test_no_thread_per_context() -> None:
    _, cancel_warm = context.with_timeout(background(), 3600)  # the one shared timer
    cancel_warm()
    before = threading.active_count()
    cancels = []
    for _ in range(500):
        ctx, cancel = context.with_timeout(background(), 3600)
        _, cancel_child = context.with_cancel(ctx)
        cancels += [cancel_child, cancel]
    assert threading.active_count() == before
    for cancel in cancels:
        cancel()


def test_concurrent_cancels_finish_once() -> None:
    ctx, cancel = context.with_cancel(background())
    calls: list[int] = []
    ctx.after_done(lambda: calls.append(1))
    start = threading.Barrier(8)

    def race() -> None:
        start.wait()
        cancel()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]


def test_dropped_children_do_not_stay_registered_with_their_parent() -> None:
    parent, cancel = context.with_cancel(background())
    for _ in range(100):
        context.with_cancel(parent)  # never cancelled, dropped at once
    gc.collect()
    assert len(parent._callbacks) == 0
    cancelled = [context.with_cancel(parent) for _ in range(10)]
    for _, cancel_child in cancelled:
        cancel_child()
    assert len(parent._callbacks) == 0
    cancel()


def test_cancelled_long_timeouts_do_not_pile_up() -> None:
    for _ in range(2000):
        _, cancel = context.with_timeout(background(), 3600)
        cancel()
    assert len(context._TIMER._heap) < 200


def test_cancel_wakes_waiters_promptly() -> None:
    ctx, cancel = context.with_cancel(background())
    woke = threading.Event()

    def waiter() -> None:
        if ctx.done().wait(30):
            woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.01)
    cancel()
    thread.join(30)
    assert woke.is_set()


def test_errors_can_be_raised_afresh() -> None:
    ctx, cancel = context.with_cancel(background())
    cancel()
    err = ctx.err()
    assert err is not None
    with pytest.raises(Canceled, match="context canceled"):
        raise type(err)(str(err))


def test_check_raises_a_fresh_error_once_done() -> None:
    ctx, cancel = context.with_cancel(context.background())
    ctx.check()  # live: nothing
    cancel()
    with pytest.raises(context.Canceled) as first:
        ctx.check()
    with pytest.raises(context.Canceled) as second:
        ctx.check()
    assert first.value is not second.value and first.value is not ctx.err()
    assert str(first.value) == str(ctx.err())
