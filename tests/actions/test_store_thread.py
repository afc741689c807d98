"""The embedded store's connection thread (actions.store._thread.WorkerThread)."""

from __future__ import annotations

import threading
import time

import pytest
import trio
import trio.testing

from actions.store._thread import WorkerThread


async def test_calls_run_on_one_other_thread_in_order_with_results_and_errors() -> None:
    worker = WorkerThread("test worker")
    seen: list[tuple[int, str]] = []

    def record(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 10

    def fail() -> None:
        raise ValueError("from the thread")

    try:
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(worker.run, lambda n=n: record(n))
                await trio.testing.wait_all_tasks_blocked()  # queued in this order
        assert [n for n, _ in seen] == list(range(50))
        assert {name for _, name in seen} == {"test worker"}
        assert await worker.run(lambda: record(7)) == 70
        with pytest.raises(ValueError, match="from the thread"):
            await worker.run(fail)
    finally:
        await worker.stop()


async def test_a_call_not_yet_started_is_dropped_when_its_caller_is_cancelled() -> None:
    worker = WorkerThread("test worker")
    release = threading.Event()
    ran: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, release.wait)  # holds the thread
            await trio.sleep(0.05)
            with trio.move_on_after(0.1) as scope:
                await worker.run(lambda: ran.append("queued"))
            assert scope.cancelled_caught
            release.set()
        assert await worker.run(lambda: "after") == "after"  # the thread went on
        assert ran == []  # the dropped call never ran
    finally:
        release.set()
        await worker.stop()


async def test_a_started_call_is_waited_for_when_its_caller_is_cancelled() -> None:
    worker = WorkerThread("test worker")
    done: list[str] = []

    def slow() -> str:
        time.sleep(0.3)
        done.append("written")
        return "ok"

    try:
        with trio.move_on_after(0.05) as scope:
            result = await worker.run(slow)  # returns: the cancel lands at the next await
            assert result == "ok" and done == ["written"]
            await trio.lowlevel.checkpoint()
        assert scope.cancelled_caught
    finally:
        await worker.stop()


async def test_stop_finishes_what_was_asked_then_ends_the_thread() -> None:
    worker = WorkerThread("test worker")
    finished: list[int] = []
    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(worker.run, lambda n=n: (time.sleep(0.02), finished.append(n)))
            await trio.testing.wait_all_tasks_blocked()
        await worker.stop()
    assert finished == [0, 1, 2]
    assert not any(t.name == "test worker" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="stopped"):
        await worker.run(lambda: None)
