"""Fixes for two hypercorn 0.18 HTTP/2 bugs that answering early makes reachable.

Answering before the whole request body has arrived is routine for an RPC server: an
UNAUTHENTICATED refusal, a message over the size limit, a stream limit, a handler that
stops reading. hypercorn mishandles the rest of that body in two ways:

1. It forgets the stream once the response is complete, and the client's next DATA
   frame hits ``self.streams[stream_id]`` with a KeyError (pgjones/hypercorn#329).
   Under the trio worker that ends the whole server: one unauthenticated request with
   a large body stopped a replica. Fix: DATA for a stream hypercorn no longer tracks is
   acknowledged (so the connection's flow-control window is not leaked) and dropped.
   The stream is deliberately not reset: RFC 9113 8.1 allows RST_STREAM(NO_ERROR)
   after a complete response, but clients that send the whole body before reading
   (httpx, hence our own ConnectClient) then fail with a protocol error instead of
   seeing the answer; the cost is that a refused client finishes its upload.

2. After gRPC trailers (HEADERS with END_STREAM) it still ends the stream a second
   time (``end_stream`` for the EndBody event). h2 treats that as an invalid transition
   and marks the stream CLOSED without telling the peer, so a client still uploading
   never gets another WINDOW_UPDATE for it and hangs. Fix: that second ``end_stream``
   becomes RST_STREAM(NO_ERROR) while the client is still sending (what grpc-go does
   after early trailers; gRPC clients expect it, curl needs it to finish) and a no-op
   on a closed stream.

3. Its send task picks the next stream from a ``priority.PriorityTree``, which places
   new streams ahead of ones already served. A stream whose response is complete is
   only cleaned up on its next turn, so under sustained concurrency (a gRPC client with
   64 calls always in flight) old streams starve, the tree grows by one entry per call,
   and at 1,000 ``TooManyStreamsError`` ends the server. Fix: ``FairScheduler``, plain
   round-robin over the unblocked streams with the same interface. Client priority
   signals are ignored, as RFC 9113 (5.3) deprecates them.

Each fix wraps one hypercorn method and leaves everything else to hypercorn; events are
still handled in order, one at a time when DATA is involved, so a stream created or
closed earlier in the same batch is seen. ``apply()`` runs once, when
``connect_proto.server`` is imported.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import h2.errors
import h2.events
import priority
from h2.stream import StreamState
from hypercorn.protocol.h2 import H2Protocol

log = logging.getLogger("connect_proto.server")

_MARK = "_connect_proto_patched"


def _drop_data_for_forgotten_streams(original: Callable[[Any, list[Any]], Awaitable[None]]):
    async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:
        if not any(isinstance(e, h2.events.DataReceived) for e in events):
            await original(self, events)  # no DATA: untouched, one call
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                await self._flush()
                continue
            await original(self, [event])

    setattr(_handle_events, _MARK, True)
    return _handle_events


def _guard_end_stream(connection: Any) -> None:
    end_stream = connection.end_stream

    def guarded(stream_id: int) -> None:
        stream = connection.streams.get(stream_id)
        state = getattr(getattr(stream, "state_machine", None), "state", None)
        if state is StreamState.HALF_CLOSED_LOCAL:
            # Trailers already ended our side while the client is still sending: say we
            # are done, as grpc-go does (RFC 9113 8.1), instead of a second END_STREAM.
            connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
            return
        if state is StreamState.CLOSED:
            return
        end_stream(stream_id)

    connection.end_stream = guarded


class FairScheduler:
    """Round-robin over unblocked streams; the subset of ``priority.PriorityTree`` that
    hypercorn uses, raising the same exceptions. O(1) per operation."""

    __slots__ = ("_active", "_queued", "_ready")

    def __init__(self) -> None:
        self._active: dict[int, bool] = {}  # stream id -> unblocked
        self._ready: deque[int] = deque()  # rotation; may hold blocked or removed ids
        self._queued: set[int] = set()  # ids in _ready, so none is queued twice

    def insert_stream(self, stream_id: int, *_: Any, **__: Any) -> None:
        if stream_id in self._active:
            raise priority.DuplicateStreamError(stream_id)
        self._active[stream_id] = True
        self._enqueue(stream_id)

    def _enqueue(self, stream_id: int) -> None:
        if stream_id not in self._queued:
            self._queued.add(stream_id)
            self._ready.append(stream_id)

    def _known(self, stream_id: int) -> None:
        if stream_id not in self._active:
            raise priority.MissingStreamError(stream_id)

    def block(self, stream_id: int) -> None:
        self._known(stream_id)
        self._active[stream_id] = False  # dropped from the rotation when next reached

    def unblock(self, stream_id: int) -> None:
        self._known(stream_id)
        self._active[stream_id] = True
        self._enqueue(stream_id)

    def remove_stream(self, stream_id: int) -> None:
        self._known(stream_id)
        del self._active[stream_id]

    def reprioritize(self, stream_id: int, *_: Any, **__: Any) -> None:
        self._known(stream_id)  # priorities themselves are ignored

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> FairScheduler:
        return self

    def __next__(self) -> int:
        ready = self._ready
        while ready:
            stream_id = ready.popleft()
            if self._active.get(stream_id):
                ready.append(stream_id)  # its next turn comes after everyone else's
                return stream_id
            self._queued.discard(stream_id)  # blocked or removed: leaves the rotation
        raise priority.DeadlockError("no unblocked streams")


def _with_guarded_connection(original: Callable[..., None]):
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _guard_end_stream(self.connection)
        self.priority = FairScheduler()

    setattr(__init__, _MARK, True)
    return __init__


def apply() -> None:
    """Install the three fixes; idempotent. Skipped (with a warning) if hypercorn changed."""
    handle_events = getattr(H2Protocol, "_handle_events", None)
    if handle_events is None:
        log.warning("hypercorn H2Protocol has no _handle_events; early-answer fix skipped")
    elif not getattr(handle_events, _MARK, False):
        H2Protocol._handle_events = _drop_data_for_forgotten_streams(handle_events)  # type: ignore[method-assign]
    if not getattr(H2Protocol.__init__, _MARK, False):
        H2Protocol.__init__ = _with_guarded_connection(H2Protocol.__init__)  # type: ignore[method-assign]


__all__ = ["FairScheduler", "apply"]
