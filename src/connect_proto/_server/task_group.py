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
  exactly as before when it must (a full channel, an empty one).
- ``TrioSingleTask`` (the keep-alive timer) takes a ``trio.Lock`` on every ``stop``,
  and the server stops the timer on every new request. ``KeepAliveTimer.stop`` only
  cancels a scope: no lock, no turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.typing import AppWrapper, ASGIReceiveEvent, ASGISendEvent, Scope

AppPut = Callable[[ASGIReceiveEvent], Awaitable[None]]


class RpcTaskGroup(TaskGroup):
    """hypercorn's trio ``TaskGroup`` whose app channel yields only when it must wait."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> AppPut:
        to_app, from_server = trio.open_memory_channel[ASGIReceiveEvent](config.max_app_queue_size)

        async def receive() -> ASGIReceiveEvent:
            try:
                return from_server.receive_nowait()
            except trio.WouldBlock:
                return await from_server.receive()

        async def put(event: ASGIReceiveEvent) -> None:
            try:
                to_app.send_nowait(event)
            except trio.WouldBlock:
                await to_app.send(event)  # the app is not reading: wait, as hypercorn does

        nursery = self._nursery
        assert nursery is not None
        nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return put


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


__all__ = ["KeepAliveTimer", "RpcTaskGroup"]
