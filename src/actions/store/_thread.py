"""One OS thread that runs blocking calls for trio tasks, one at a time, in order.

A SQLite connection is used by one thread at a time anyway, so each gets its own thread
rather than borrowing one from trio's pool per call: ``trio.to_thread.run_sync`` pays for
a capacity limiter, a context copy and renaming the OS thread twice (two system calls) on
every call: 100-110 µs of CPU per round trip on the benchmark machine against 67-89 for
handing the call to a waiting thread (bench/thread_hop.py). The result comes back the
way trio's own does: ``TrioToken.run_sync_soon`` reschedules the waiting task.

Cancellation is trio's ``abandon_on_cancel=False``: a call its caller gave up on before the
thread took it is dropped (it never runs, the caller sees Cancelled); one already running
is waited for, so a caller never loses track of whether a write happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")

_QUEUED, _RUNNING, _DROPPED = "queued", "running", "dropped"


class _Call(Generic[T]):
    __slots__ = ("fn", "state", "task")

    def __init__(self, fn: Callable[[], T], task: trio.lowlevel.Task) -> None:
        self.fn: Callable[[], T] | None = fn
        self.task = task
        self.state = _QUEUED


class WorkerThread:
    """Created inside ``trio.run`` (results go back through its token); ``stop`` ends it."""

    def __init__(self, name: str) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._calls: queue.SimpleQueue[_Call[object] | None] = queue.SimpleQueue()
        self._state_lock = threading.Lock()  # a call's state: taken by the thread or dropped
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopping

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the thread, after the calls made before it."""
        if self._stopping:
            raise RuntimeError(f"{self._thread.name}: the thread was stopped")
        await trio.lowlevel.checkpoint_if_cancelled()
        call: _Call[T] = _Call(fn, trio.lowlevel.current_task())
        self._calls.put(call)  # type: ignore[arg-type]

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            with self._state_lock:
                if call.state is _QUEUED:
                    call.state = _DROPPED
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED  # running: its result will wake us

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    async def stop(self) -> None:
        """Let the calls already made finish, then end the thread and wait for it."""
        if self._stopping:
            return
        self._stopping = True
        self._calls.put(None)
        await trio.to_thread.run_sync(self._thread.join)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            with self._state_lock:
                if call.state is _DROPPED:
                    continue
                call.state = _RUNNING
            assert call.fn is not None
            result = outcome.capture(call.fn)
            call.fn = None  # nothing the call referred to outlives it here
            try:
                self._token.run_sync_soon(trio.lowlevel.reschedule, call.task, result)
            except trio.RunFinishedError:
                return  # trio.run is over: nobody is waiting any more
