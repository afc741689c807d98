"""Following one parent's WatchForUpdates stream, reconnecting when the server asks.

A watch stream ends with UNAVAILABLE when the server shuts down or when a subscriber
fell too far behind; the client is expected to reconnect and rebuild its view from the
new snapshot (see docs/architecture.md, "One watch"). ``follow_watch`` does that for
``actions-service watch``: it folds each response into a ``WatchState`` and hands it to
a ``WatchSink`` that shows it. It knows nothing of argparse or of how responses are
shown, so it is tested with a scripted stream instead of a server.

The stream lacks what some NOTEs need (a condition's prompt, an abort's reason), so
``follow_watch`` may be given ``FetchDetails``: asked once per child and phase that
wants details (``WatchState.wanting_details``), for every such child at the snapshot and
then for the child an update is about, before the response is shown.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import trio
from flyteidl2.actions import actions_service_pb2 as pb

from actions import phases
from actions.watch_view import WatchState
from connect_proto import Code, RpcError

OpenStream = Callable[[], AsyncGenerator[pb.WatchForUpdatesResponse, None]]


ProbeParent = Callable[[], Awaitable[bool]]
# Child names -> the NOTE their details give; must not raise (a failure gives no note).
FetchDetails = Callable[[list[str]], Awaitable[dict[str, str]]]


class WatchSink(Protocol):
    """Shows the watch: ``show`` once per response, after it was folded into ``state``;
    ``lost`` when the stream was lost and the watch is about to reconnect."""

    def show(
        self,
        response: pb.WatchForUpdatesResponse,
        state: WatchState,
        *,
        changed: bool,
        was_synced: bool,
        now: float,
    ) -> None: ...

    def lost(self, state: WatchState, error: Exception, now: float) -> None: ...


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
    probe_parent: ProbeParent | None = None,
    details: FetchDetails | None = None,
    policy: ReconnectPolicy = ReconnectPolicy(),
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Follow the stream until the server ends it, until a snapshot shows that the
    parent does not exist (``state.parent_missing()``), until the parent is found gone
    after its children were aborted (``state.parent_gone``), or, with ``until_done``,
    until nothing more will happen (``WatchState.done``).

    The stream carries the parent's phase in its snapshot only; an aborted parent shows
    as its children turning ABORTED. So when every child is terminal and one of them
    was aborted, ``probe_parent`` (when given) is asked whether the parent still exists.

    After an UNAVAILABLE on a stream that had delivered its snapshot, reconnect with
    backoff and rebuild from the new snapshot (``state.resync()``; the sink is told via
    ``lost``). Any other error, an UNAVAILABLE before any snapshot (a server that never
    answered: a typo in the URL should fail at once, not hang) or too many failures in
    a row raise ``RpcError``.
    """
    ever_synced = False
    failures = 0
    while True:
        try:
            await _follow_once(
                open_stream, state, sink, until_done=until_done, probe_parent=probe_parent,
                details=details, clock=clock,
            )  # fmt: skip
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
            sink.lost(state, exc, clock())
            await trio.sleep(policy.delay(failures))


async def _follow_once(
    open_stream: OpenStream,
    state: WatchState,
    sink: WatchSink,
    *,
    until_done: bool,
    probe_parent: ProbeParent | None,
    details: FetchDetails | None,
    clock: Callable[[], float],
) -> None:
    async with aclosing(open_stream()) as responses:
        async for response in responses:
            now = clock()
            was_synced = state.synced
            changed = state.apply(response, now)
            if state.synced and state.parent_missing():
                return  # nothing to show: the caller reports the missing parent
            if details is not None and changed and state.synced:
                await _add_details(details, state, response, was_synced)
            sink.show(response, state, changed=changed, was_synced=was_synced, now=now)
            if not state.synced:
                continue
            if changed and probe_parent is not None and _children_aborted(response, state):
                if not await probe_parent():
                    state.parent_gone = True
                    return
            if until_done and state.done():
                return


async def _add_details(
    details: FetchDetails,
    state: WatchState,
    response: pb.WatchForUpdatesResponse,
    was_synced: bool,
) -> None:
    if not was_synced:
        names = state.wanting_details()  # the snapshot: all at once
    elif response.WhichOneof("message") == "action_update":
        names = state.wanting_details(response.action_update.action_id.name)
    else:
        return
    if names:
        for name, text in (await details(names)).items():
            state.set_detail(name, text)


def _children_aborted(response: pb.WatchForUpdatesResponse, state: WatchState) -> bool:
    """This response made the last child terminal, and some child was aborted."""
    if response.WhichOneof("message") != "action_update":
        return False
    if response.action_update.action_id.name == state.parent:
        return False
    return state.all_children_terminal() and any(
        row.phase == phases.ABORTED for row in state.children.values()
    )


__all__ = [
    "FetchDetails",
    "OpenStream",
    "ProbeParent",
    "ReconnectPolicy",
    "WatchSink",
    "follow_watch",
]
