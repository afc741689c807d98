"""Following one parent's WatchForUpdates stream, reconnecting when the server asks.

A watch stream ends with UNAVAILABLE when the server shuts down or when a subscriber
fell too far behind; the client is expected to reconnect and rebuild its view from the
new snapshot (see docs/architecture.md, "One watch"). ``follow_watch`` does that for
``actions-service watch``: it folds each response into a ``WatchState`` and hands it to
a ``WatchSink`` that shows it. It knows nothing of argparse or of how responses are
shown, so it is tested with a scripted stream instead of a server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import trio
from flyteidl2.actions import actions_service_pb2 as pb

from actions.watch_view import WatchState
from connect_proto import Code, RpcError

OpenStream = Callable[[], AsyncGenerator[pb.WatchForUpdatesResponse, None]]


class WatchSink(Protocol):
    """Shows the watch: called once per response, after it was folded into ``state``."""

    def show(
        self,
        response: pb.WatchForUpdatesResponse,
        state: WatchState,
        *,
        changed: bool,
        was_synced: bool,
        now: float,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How often and how soon to reconnect after UNAVAILABLE."""

    max_reconnects: int = 5  # in a row, without a snapshot in between
    base_delay: float = 0.25
    max_delay: float = 5.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before reconnect number ``failures`` (1, 2, ...)."""
        return min(self.max_delay, self.base_delay * 2.0**failures)


async def follow_watch(
    open_stream: OpenStream,
    state: WatchState,
    sink: WatchSink,
    *,
    until_done: bool = False,
    policy: ReconnectPolicy = ReconnectPolicy(),
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Follow the stream until the server ends it or, with ``until_done``, until every
    child is terminal (``WatchState.done``).

    After an UNAVAILABLE on a stream that had delivered its snapshot, reconnect with
    backoff and rebuild from the new snapshot (``state.resync()``). Any other error, an
    UNAVAILABLE before any snapshot (a server that never answered: a typo in the URL
    should fail at once, not hang) or too many failures in a row raise ``RpcError``.
    """
    ever_synced = False
    failures = 0
    while True:
        try:
            await _follow_once(open_stream, state, sink, until_done=until_done, clock=clock)
            return
        except RpcError as exc:
            if state.synced:
                ever_synced, failures = True, 0
            if exc.code is not Code.UNAVAILABLE or not ever_synced:
                raise
            if failures >= policy.max_reconnects:
                raise
            failures += 1
            state.resync()
            await trio.sleep(policy.delay(failures))


async def _follow_once(
    open_stream: OpenStream,
    state: WatchState,
    sink: WatchSink,
    *,
    until_done: bool,
    clock: Callable[[], float],
) -> None:
    async with aclosing(open_stream()) as responses:
        async for response in responses:
            now = clock()
            was_synced = state.synced
            changed = state.apply(response, now)
            sink.show(response, state, changed=changed, was_synced=was_synced, now=now)
            if until_done and state.done():
                return


__all__ = ["OpenStream", "ReconnectPolicy", "WatchSink", "follow_watch"]
