"""Fixes for five hypercorn 0.18 bugs (trio worker, HTTP/2) that each end or hang a server,
and one for its cost per response (6).

The first two are reached by answering before the whole request body has arrived,
which is routine for an RPC server: an UNAUTHENTICATED refusal, a message over the
size limit, a stream limit, a handler that stops reading. The third by load alone, the
fourth by a busy client during graceful shutdown, the fifth by a client closing its
connection while a response is being flushed.

1. It forgets the stream once the response is complete, and the client's next DATA
   frame hits ``self.streams[stream_id]`` with a KeyError (pgjones/hypercorn#329).
   Under the trio worker that ends the whole server: one unauthenticated request with
   a large body stopped a replica. Fix: DATA for a stream hypercorn no longer tracks is
   acknowledged (so the connection's flow-control window is not leaked) and dropped.
   Only after gRPC trailers is the stream also reset with NO_ERROR (RFC 9113 8.1, what
   grpc-go does; curl waits for it). Other responses are not reset: clients that send
   the whole body before reading (httpx, hence our own ConnectClient) would fail with
   a protocol error instead of seeing the answer, and hyper-based clients drop unread
   response data; the cost is that a refused client finishes its upload.

2. After gRPC trailers (HEADERS with END_STREAM) it still ends the stream a second
   time (``end_stream`` for the EndBody event). h2 treats that as an invalid transition
   and marks the stream CLOSED without telling the peer, so a client still uploading
   never gets another WINDOW_UPDATE for it and hangs. Fix: ``end_stream`` on a stream
   whose sending side is already closed is a no-op.

3. Its send task picks the next stream from a ``priority.PriorityTree``, which places
   new streams ahead of ones already served. A stream whose response is complete is
   only cleaned up on its next turn, so under sustained concurrency (a gRPC client with
   64 calls always in flight) old streams starve, the tree grows by one entry per call,
   and at 1,000 ``TooManyStreamsError`` ends the server. Fix: ``FairScheduler``, plain
   round-robin over the unblocked streams with the same interface. Client priority
   signals are ignored, as RFC 9113 (5.3) deprecates them.

4. Once it has sent GOAWAY during graceful shutdown, a request the client sent before
   seeing it makes hypercorn reset the stream on the closed h2 connection; h2 raises
   ProtocolError and ``serve`` ends with an exception instead of finishing the calls
   in flight. Fix: on a closed connection ``reset_stream`` and ``update_settings`` do
   nothing; the stream is left unprocessed, which is what GOAWAY's last-stream-id
   already told the client (it retries elsewhere).

5. Closing a connection (``TCPServer._close``: ``send_eof``) runs outside the send
   lock, so a concurrent flush gets ``trio.BusyResourceError``, which nothing catches:
   the exception ends the whole server. Fix: ``protocol_send`` treats it like the
   broken socket it is about to be.

6. Not a bug but the largest cost of a small call: every ``H2Protocol._flush`` (response
   HEADERS, each DATA frame, END_STREAM, trailers, WINDOW_UPDATEs) is its own locked,
   shielded ``send_all`` with its own trip through the trio scheduler, so a gRPC unary
   response takes three socket writes and 64 calls in flight take 192. Fix: under the
   trio worker, each H2 connection's ``send`` goes through a ``WriteCoalescer``.
   ``_flush`` appends the bytes h2 produced to the connection's buffer and wakes one
   writer task per connection; the writer yields once (so the other tasks of the same
   scheduling step add their frames) and then writes everything buffered with one
   ``send_all`` (through ``TCPServer.protocol_send``, so its lock and fix 5 still apply),
   repeating until the buffer is empty. What it keeps:

   - Order: bytes leave in the order h2 produced them (one buffer, one writer); h2
     itself enforces flow control when it builds frames, so nothing changes there.
   - Backpressure: a ``_flush`` that brings the buffer to ``HIGH_WATER`` (64 KiB) waits
     until the writer has written it, as every ``_flush`` used to; a client that stops
     reading still stalls the server's reads and sends.
   - Any other event for the server (``Closed``, ``Updated(idle=True)``) waits until the
     buffer is written first, so GOAWAY, trailers and the last responses are on the
     socket before hypercorn may close it (graceful shutdown, idle timeout, protocol
     errors). ``Updated(idle=False)`` (a new request; it only stops the idle timer) is
     passed on at once.
   - When the connection closes (``Closed`` reaches the protocol: peer gone, socket
     broken, or hypercorn closing it), the writer stops and unwritten bytes are dropped,
     as they would have failed on the socket; later sends go straight through, as before.

   Measured in tests/connect_proto/test_hypercorn_fixes.py: one gRPC unary response alone
   takes 1-2 writes instead of 3, 32 responses to calls sent at once about 45 instead
   of 96 (hypercorn hands the calls to the app one scheduling step at a time); unary
   throughput on h2c rose 1.2-1.7x (docs/benchmarks.md, run D).

The fixes wrap three hypercorn methods (``H2Protocol._handle_events``,
``H2Protocol.__init__``, ``TCPServer.protocol_send``) and leave everything else to
hypercorn; events are still
handled in order, one at a time when DATA is involved, so a stream created or
closed earlier in the same batch is seen; fixes 2 and 4 wrap methods of each
connection's ``h2`` object; fix 6 replaces each trio H2 connection's ``send`` and
``handle`` (instance attributes, set by the ``__init__`` wrapper). ``apply()`` runs once, when
``connect_proto._server.serve`` is imported.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import h2.errors
import h2.events
import priority
import trio
from h2.connection import ConnectionState
from h2.stream import StreamState
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.events import Body
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.task_group import TaskGroup as TrioTaskGroup
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("connect_proto._server.serve")

_LOCAL_DONE = (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED)

_MARK = "_connect_proto_patched"


def _drop_data_for_forgotten_streams(original: Callable[[Any, list[Any]], Awaitable[None]]):
    async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:
        if not any(isinstance(e, h2.events.DataReceived) for e in events):
            await original(self, events)  # no DATA: untouched, one call
            return
        # DATA is handled here, as hypercorn does, but looked up when reached (a stream
        # may be created or forgotten earlier in the batch); other events go to
        # hypercorn one at a time, in order. One flush at the end, as in hypercorn.
        for event in events:
            if not isinstance(event, h2.events.DataReceived):
                await original(self, [event])
                continue
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                await stream.handle(Body(stream_id=event.stream_id, data=event.data))
            elif event.flow_controlled_length and _answered_with_trailers(
                self.connection, event.stream_id
            ):
                # Every response byte is out (trailers go last): tell the client to stop
                # uploading, as grpc-go does (RFC 9113 8.1).
                self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        await self._flush()

    setattr(_handle_events, _MARK, True)
    return _handle_events


def _answered_with_trailers(connection: Any, stream_id: int) -> bool:
    machine = getattr(connection.streams.get(stream_id), "state_machine", None)
    return (
        machine is not None
        and machine.state is StreamState.HALF_CLOSED_LOCAL
        and bool(getattr(machine, "trailers_sent", False))
    )


def _guard_connection(connection: Any) -> None:
    end_stream = connection.end_stream

    def guarded(stream_id: int) -> None:
        machine = getattr(connection.streams.get(stream_id), "state_machine", None)
        if machine is not None and machine.state in _LOCAL_DONE:
            return  # trailers already ended our side; a second END_STREAM would close it
        end_stream(stream_id)

    connection.end_stream = guarded

    # Fix 4: once GOAWAY is out the h2 connection is CLOSED and sends nothing more;
    # hypercorn still answers a late request with reset_stream and update_settings.
    # Skipping them leaves the stream unprocessed, as GOAWAY's last-stream-id says.
    for name in ("reset_stream", "update_settings"):
        send = getattr(connection, name)

        def unless_closed(*args: Any, _send: Callable[..., Any] = send, **kwargs: Any) -> Any:
            if connection.state_machine.state is ConnectionState.CLOSED:
                return None
            return _send(*args, **kwargs)

        setattr(connection, name, unless_closed)


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


class WriteCoalescer:
    """Fix 6: one writer per H2 connection; see the module docstring.

    ``send`` stands in for ``TCPServer.protocol_send`` (the ``send`` hypercorn gives the
    protocol); ``run`` is the writer task; ``stop`` is called when ``Closed`` reaches the
    protocol."""

    HIGH_WATER = 64 * 1024

    __slots__ = ("_busy", "_chunks", "_running", "_send", "_size", "_stopped", "_task",
                 "_wake", "_written")  # fmt: skip

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self._chunks: list[bytes] = []
        self._size = 0
        self._wake = trio.Event()  # set when there is something to write (or to stop)
        self._written = trio.Event()  # set, then replaced, when the buffer is written
        self._busy = False  # the writer has woken and not yet emptied the buffer
        self._running = True  # the writer task has not ended
        self._stopped = False
        self._task: Any = None

    async def send(self, event: Any) -> None:
        if isinstance(event, RawData):
            if not self._running:
                await self._send(event)  # the writer has ended: write as hypercorn does
                return
            self._chunks.append(event.data)
            self._size += len(event.data)
            self._wake.set()
            if self._size >= self.HIGH_WATER:
                await self.flush()  # backpressure, as when every _flush was a send_all
            return
        if not (isinstance(event, Updated) and not event.idle):
            await self.flush()  # Closed or idle: the bytes before it go out first
        await self._send(event)

    async def flush(self) -> None:
        """Until everything buffered so far is written (or the writer has ended)."""
        if self._task is not None and trio.lowlevel.current_task() is self._task:
            return  # called from inside the writer's own send: it is writing already
        while self._running and (self._chunks or self._busy):
            await self._written.wait()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        self._task = trio.lowlevel.current_task()
        try:
            while not self._stopped:
                await self._wake.wait()
                self._busy = True
                # One turn of the scheduler: the other tasks woken in this step (the
                # send task, the app tasks) add their frames to this write.
                await trio.lowlevel.checkpoint()
                while self._chunks and not self._stopped:
                    data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                    self._chunks.clear()
                    self._size = 0
                    await self._send(RawData(data=data))
                self._wake = trio.Event()  # the buffer is empty (or dropped below)
                self._busy = False
                written, self._written = self._written, trio.Event()
                written.set()
        finally:
            self._running = False
            self._busy = False
            self._chunks.clear()  # the connection is closed: these would fail to send
            self._size = 0
            self._written.set()


def _coalesce_writes(protocol: Any) -> None:
    if not isinstance(protocol.task_group, TrioTaskGroup):
        return  # the asyncio worker buffers in its transport already
    coalescer = WriteCoalescer(protocol.send)
    protocol.send = coalescer.send
    handle = protocol.handle

    async def handle_then_stop_on_close(event: Any) -> None:
        try:
            await handle(event)
        finally:
            if isinstance(event, Closed):
                coalescer.stop()

    protocol.handle = handle_then_stop_on_close
    protocol.write_coalescer = coalescer
    protocol.task_group.spawn(coalescer.run)


_coalescing = False  # set by apply() when hypercorn has the expected shape


def _with_guarded_connection(original: Callable[..., None]):
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _guard_connection(self.connection)
        self.priority = FairScheduler()
        if _coalescing:
            _coalesce_writes(self)

    setattr(__init__, _MARK, True)
    return __init__


def _closing_is_not_fatal(original: Callable[[Any, Any], Awaitable[None]]):
    async def protocol_send(self: Any, event: Any) -> None:
        try:
            await original(self, event)
        except trio.BusyResourceError:
            # Only _close() touches the socket outside hypercorn's send lock, so the
            # connection is closing: the same outcome as a broken socket.
            await self.protocol.handle(Closed())

    setattr(protocol_send, _MARK, True)
    return protocol_send


def apply() -> None:
    """Install the fixes; idempotent. Skipped (with a warning) if hypercorn changed."""
    handle_events = getattr(H2Protocol, "_handle_events", None)
    if handle_events is None:
        log.warning("hypercorn H2Protocol has no _handle_events; early-answer fix skipped")
    elif not getattr(handle_events, _MARK, False):
        H2Protocol._handle_events = _drop_data_for_forgotten_streams(handle_events)  # type: ignore[method-assign]
    if not getattr(TCPServer.protocol_send, _MARK, False):
        TCPServer.protocol_send = _closing_is_not_fatal(TCPServer.protocol_send)  # type: ignore[method-assign]
    if not getattr(H2Protocol.__init__, _MARK, False):
        H2Protocol.__init__ = _with_guarded_connection(H2Protocol.__init__)  # type: ignore[method-assign]
    global _coalescing
    _coalescing = _coalescing_shape_ok()
    if not _coalescing:
        log.warning("hypercorn H2Protocol send path changed; write coalescing skipped")


def _coalescing_shape_ok() -> bool:
    """Fix 6 relies on: ``_flush`` writing through ``self.send(RawData(...))`` with what
    ``data_to_send`` returns, ``handle`` receiving ``Closed``, a ``send_task``, and the
    trio ``TaskGroup.spawn``."""
    flush = getattr(H2Protocol, "_flush", None)
    names = getattr(getattr(flush, "__code__", None), "co_names", ())
    return (
        {"send", "data_to_send"} <= set(names)
        and callable(getattr(H2Protocol, "handle", None))
        and callable(getattr(H2Protocol, "send_task", None))
        and callable(getattr(TrioTaskGroup, "spawn", None))
        and "idle" in getattr(Updated, "__dataclass_fields__", {})
    )


__all__ = ["FairScheduler", "WriteCoalescer", "apply"]
