"""A connection's task group and keep-alive timer, without a scheduler turn per event.

Not bugs, but most of the trips through trio's scheduler a small call made under
hypercorn 0.18's trio worker (counted with a trio instrument under h2load: 6.4 steps of
the handler's task per call, and a lock per request):

- ``TaskGroup.spawn_app`` hands the request body to the app through a memory channel
  whose ``send`` and ``receive`` each yield to the scheduler even when the channel has
  room or an item. So the reader gave the app task its turn between the request's
  HEADERS and its DATA, the app found no body yet and slept again, and the
  ``http.disconnect`` put after the response cost the finished app one more turn.
  ``RpcTaskGroup`` puts and takes without yielding when that cannot block, and waits
  exactly as before when it must (a full queue, an empty one). Its queue is an
  ``AppInbox``, not a memory channel: a channel is three objects with their own
  bookkeeping per request, built and dropped on every call (about 2 % of a small call's
  CPU, docs/benchmarks.md, fourth pass), for a queue with one reader.
- ``TrioSingleTask`` (the keep-alive timer) takes a ``trio.Lock`` on every ``stop``,
  and the server stops the timer on every new request. ``KeepAliveTimer.stop`` only
  cancels a scope: no lock, no turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.typing import AppWrapper, ASGIReceiveEvent, ASGISendEvent, Scope

AppPut = Callable[[ASGIReceiveEvent], Awaitable[None]]
W = TypeVar("W")


class AppInbox:
    """The events on their way to one app (request body, disconnect): a FIFO of at most
    ``limit``, what hypercorn's memory channel was. A take or put that need not wait
    does not yield; a take waiting for an event is handed the next one directly; a put
    into a full inbox waits for room (with ``limit`` 0, for a taker), oldest first. A
    cancelled wait leaves nothing behind.

    Plain lists, the waiting ones made only when someone waits: an inbox lives as long
    as its stream, and holds zero to two events at a time (a deque is a 64-slot block).
    """

    __slots__ = ("_events", "_limit", "_putters", "_takers")

    def __init__(self, limit: int) -> None:
        self._events: list[ASGIReceiveEvent] = []
        self._limit = limit
        self._takers: list[trio.lowlevel.Task] | None = None
        self._putters: list[tuple[trio.lowlevel.Task, ASGIReceiveEvent]] | None = None

    async def take(self) -> ASGIReceiveEvent:
        if self._events:
            event = self._events.pop(0)
            if self._putters:  # room now: the oldest waiting put goes in
                putter, pending = self._putters.pop(0)
                self._events.append(pending)
                trio.lowlevel.reschedule(putter)
            return event
        if self._putters:  # a zero-size inbox: take straight from a waiting put
            putter, event = self._putters.pop(0)
            trio.lowlevel.reschedule(putter)
            return event
        if self._takers is None:
            self._takers = []
        handed: ASGIReceiveEvent = await _park(self._takers, trio.lowlevel.current_task())
        return handed

    async def put(self, event: ASGIReceiveEvent) -> None:
        if self._takers:
            trio.lowlevel.reschedule(self._takers.pop(0), outcome.Value(event))
        elif len(self._events) < self._limit:
            self._events.append(event)
        else:  # the app is not reading: wait, as hypercorn does
            if self._putters is None:
                self._putters = []
            await _park(self._putters, (trio.lowlevel.current_task(), event))


async def _park(waiting: list[W], entry: W) -> Any:
    """Wait as ``entry`` in ``waiting`` until rescheduled (with what the waker hands
    over); a cancelled wait takes the entry out again."""
    waiting.append(entry)

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        waiting.remove(entry)
        return trio.lowlevel.Abort.SUCCEEDED

    return await trio.lowlevel.wait_task_rescheduled(abort)


class RpcTaskGroup(TaskGroup):
    """hypercorn's trio ``TaskGroup`` with an ``AppInbox`` between server and app."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> AppPut:
        inbox = AppInbox(config.max_app_queue_size)
        nursery = self._nursery
        assert nursery is not None
        nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            inbox.take,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return inbox.put


class KeepAliveTimer:
    """``TrioSingleTask`` for the keep-alive timeout, without its lock.

    ``restart`` cancels the running timer and starts ``action`` in the connection's
    nursery; ``stop`` cancels it. A ``stop`` or ``restart`` that comes while an earlier
    ``restart`` waits for its task to start wins: the task that started late is
    cancelled at once.
    """

    __slots__ = ("_generation", "_handle")

    def __init__(self) -> None:
        self._handle: trio.CancelScope | None = None
        self._generation = 0

    async def restart(self, task_group: TaskGroup, action: Callable[[], Awaitable[Any]]) -> None:
        self._generation += 1
        mine = self._generation
        self._cancel()
        nursery = task_group._nursery
        assert nursery is not None
        # Shielded (starting is immediate): a caller already cancelled must not leave the
        # connection with its old timer cancelled and no new one.
        with trio.CancelScope(shield=True):
            handle: trio.CancelScope = await nursery.start(_cancellable, action)
        if mine == self._generation:
            self._handle = handle
        else:
            handle.cancel()  # stopped or restarted while this one was starting

    async def stop(self) -> None:
        self._generation += 1
        self._cancel()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _cancellable(
    action: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await action()


__all__ = ["AppInbox", "KeepAliveTimer", "RpcTaskGroup"]
