"""hypercorn 0.18's HTTP/1.1 and HTTP/2 protocols with the fixes an RPC server needs.

``RpcProtocolWrapper`` picks ``RpcH2Protocol`` or ``RpcH11Protocol`` as hypercorn's
``ProtocolWrapper`` picks its own (ALPN, h2c prior knowledge, h2c upgrade). What differs
from hypercorn, each a bug written up in docs/hypercorn-upstream.md:

HTTP/2 (``RpcH2Protocol``)
  - DATA for a stream hypercorn has already forgotten (the response completed before
    the request body did: an early refusal, a size limit, a handler that stops
    reading) raised ``KeyError`` and ended the server (issue 1). It is acknowledged, so
    the connection's flow-control window is not leaked, and dropped. Only after gRPC
    trailers is the stream also reset with NO_ERROR (RFC 9113 8.1, what grpc-go does;
    curl waits for it). Other responses are not reset: clients that send the whole body
    before reading (httpx) would fail with a protocol error instead of seeing the
    answer; the cost is that a refused client finishes its upload.
  - The rest of a batch of events is dropped once the connection has closed (a send
    found the socket gone while the batch was being handled): hypercorn went on,
    started handlers for a dead connection, and hit issue 1's ``KeyError``.
  - Streams are scheduled round-robin (``FairScheduler``, issue 3), on an
    ``RpcH2Connection`` (issues 2, 4, 6), and written through a ``WriteCoalescer``
    unless ``coalesce_writes`` is off.
  - During graceful shutdown a new stream is refused with REFUSED_STREAM (safe to retry
    elsewhere, RFC 9113 8.7) instead of NO_ERROR; a stream opened and reset in the same
    read is never started (issue 6 crashed here).
  - ``FloodMeter`` limits streams reset before a response, PINGs, SETTINGS and empty
    DATA frames; past a limit the connection ends with GOAWAY ENHANCE_YOUR_CALM (issue 9).
    Input is handed to h2 in ``RECEIVE_SLICE`` pieces with a scheduler turn between, so
    a flood is stopped after a few slices and other connections are served meanwhile.
  - When the connection closes, every stream's send buffer is closed too: a handler
    still answering (a gRPC call whose client went away) waited forever for the send
    task, which had ended, to drain it, holding shutdown for the grace period (issue 8).
    Then each stream is told of the disconnect in its own task (issue 10).
  - A stream buffers at most ``STREAM_BUFFER_LIMIT`` response bytes before its writer
    waits for the peer's window (``BoundedStreamBuffer``): hypercorn's writer went on
    whenever the send task looked, even when it took 0 bytes, so a window-0 client was
    buffered for without bound and an app's write timeout never fired (issue 13).
  - A stream whose app ended without finishing its response (abandoned at a write
    timeout, or failed mid-stream) is reset with CANCEL; hypercorn left it open on the
    live connection, counted against the client's stream limit (issue 14).
  - An idle connection closed by the server (keep-alive timeout, shutdown) first
    sends GOAWAY (``goodbye``), instead of just closing the socket.
  - Not a bug, the cost of every response: hypercorn hands each body, end of body
    and trailers to its send task through the stream's buffer, and the handler waits
    until that task has run (two trips through the scheduler per call). When nothing of
    the stream is queued and the peer's window takes the data, they are written to h2
    at once (``_send_directly``); the send task is left with what flow control holds
    back, so order and backpressure are as before. Fairness between streams with open
    windows then comes from trio's round-robin of the tasks writing them (and the
    coalescer's backpressure), not from ``FairScheduler``, which still orders what
    waits for window.

HTTP/1.1 (``RpcH11Protocol``, issue 7)
  - Once the connection is closed its reader stops; hypercorn's reader could wait for
    ``can_read`` forever (the next request had arrived while the previous response was
    being finished), holding shutdown for the whole grace period.
  - A request that had already arrived when shutdown began is answered (the app refuses
    it: Connect UNAVAILABLE / HTTP 503) with ``connection: close``, instead of the
    connection closing under it with no answer.
  - ``busy`` tells the server not to close the connection as idle while a request is
    being read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import (
    Body,
    Data,
    EndBody,
    EndData,
    Response,
    StreamClosed,
    Trailers,
)
from hypercorn.protocol.events import (
    Event as StreamEvent,
)
from hypercorn.protocol.h2 import BufferCompleteError, H2Protocol, StreamBuffer
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol
from hypercorn.trio.task_group import TaskGroup as TrioTaskGroup
from hypercorn.typing import AppWrapper, ConnectionState, TaskGroup, WorkerContext

from connect_proto._server.coalescer import WriteCoalescer
from connect_proto._server.flood import FloodLimits, FloodMeter, Frames
from connect_proto._server.h2_connection import RpcH2Connection
from connect_proto._server.scheduler import FairScheduler, MissingStreamError

log = logging.getLogger("connect_proto._server")

Send = Callable[[Event], Awaitable[None]]

# The most response bytes a stream buffers before its writer waits for the peer to take
# some (its flow-control window): hypercorn's buffer let a writer go on whenever the send
# task took anything, even 0 bytes, so a window-0 client was buffered for without end.
STREAM_BUFFER_LIMIT = 64 * 1024

# Bytes handed to h2 at a time (RpcH2Protocol._receive): about 95 HEADERS+RST_STREAM
# pairs; a larger frame spans slices (h2 buffers a partial frame).
RECEIVE_SLICE = 4 * 1024


@dataclass(frozen=True)
class ServerOptions:
    """What ``serve`` changes in how connections are handled."""

    coalesce_writes: bool = True
    flood_limits: FloodLimits = field(default_factory=FloodLimits)
    # A socket write that makes no progress for this long closes the connection.
    write_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.write_timeout > 0:
            raise ValueError("write_timeout must be > 0")


class BoundedStreamBuffer(StreamBuffer):
    """hypercorn's per-stream send buffer, whose ``push`` waits while more than
    ``STREAM_BUFFER_LIMIT`` bytes are buffered (until the send task takes them, or the
    buffer is closed) rather than until the send task merely looks (issue 13).

    hypercorn's keeps two events per stream and replaces one with a new one on every
    push; a buffer lives as long as its stream (an idle watch included). Here the two
    states are flags, and an event is made only while the app waits on one (``drain``
    for the end of a response, ``push`` for room): the same waits, woken by the same
    ``pop`` and ``close``."""

    def __init__(self, event_class: object = None) -> None:
        # (hypercorn's __init__ is not called: it would make the two events. The
        # argument is there for hypercorn's signature; no event class is used.)
        self.buffer = bytearray()
        self._complete = False
        self._emptied = False  # hypercorn's _is_empty: set by pop emptying it, and close
        self._changed: trio.Event | None = None  # while the app waits on the state

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    async def drain(self) -> None:
        if self._emptied:
            await trio.lowlevel.checkpoint()  # as waiting on a set event does
        while not self._emptied:
            await self._wait_change()

    async def close(self) -> None:
        self._complete = True
        self.buffer = bytearray()
        self._emptied = True
        self._notify()

    async def push(self, data: bytes) -> None:
        if self._complete:
            raise BufferCompleteError()
        self.buffer.extend(data)
        self._emptied = False
        while len(self.buffer) >= STREAM_BUFFER_LIMIT and not self._complete:
            await self._wait_change()

    async def pop(self, max_length: int) -> bytes:
        length = min(len(self.buffer), max_length)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        if not self.buffer:
            self._emptied = True
        if len(self.buffer) < STREAM_BUFFER_LIMIT:
            self._notify()  # room for a waiting push, or the end a drain waits for
        return data


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown peer"


class RpcH2Protocol(H2Protocol):
    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        task_group: TaskGroup,
        connection_state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Send,
        *,
        options: ServerOptions,
    ) -> None:
        # The asyncio worker's transport buffers writes already; only trio needs this.
        self.write_coalescer: WriteCoalescer | None = None
        if options.coalesce_writes and isinstance(task_group, TrioTaskGroup):
            self.write_coalescer = WriteCoalescer(send)
            send = self.write_coalescer.send
        super().__init__(
            app, config, context, task_group, connection_state, ssl, client, server, send
        )
        # The same connection hypercorn builds, as our subclass; nothing was sent yet.
        self.connection: RpcH2Connection = RpcH2Connection()
        self.connection.DEFAULT_MAX_INBOUND_FRAME_SIZE = config.h2_max_inbound_frame_size
        self.connection.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: config.h2_max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.h2_max_header_list_size,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        # Duck-typed: the part of priority.PriorityTree hypercorn uses.
        self.scheduler = FairScheduler()
        self.priority = self.scheduler  # type: ignore[assignment]
        self.flood = FloodMeter(options.flood_limits, clock=trio.current_time)
        self._answered: set[int] = set()  # streams whose response headers were sent
        self._trailers_sent: set[int] = set()  # ... and trailers, the client still sending
        self._refusing = False  # MAX_CONCURRENT_STREAMS 0 was sent (shutdown)
        self._calming = False  # closing for a flood: nothing more is read

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        if self.write_coalescer is not None:
            self.task_group.spawn(self.write_coalescer.run)
        await super().initiate(headers, settings)

    async def handle(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._receive(event.data)
            return
        if not isinstance(event, Closed):
            await super().handle(event)
            return
        self.closed = True
        await self._release_senders()
        # Each stream is told on its own: one whose app queue is full (it reads nothing)
        # must not keep the others from hearing of the disconnect.
        async with trio.open_nursery() as nursery:
            for stream_id in list(self.streams):
                nursery.start_soon(self._close_stream, stream_id)
        await self.has_data.set()

    async def _release_senders(self) -> None:
        """The connection is gone: nothing will drain the stream buffers any more, so a
        handler still answering must not wait on them (hypercorn issue 8)."""
        if self.write_coalescer is not None:
            self.write_coalescer.stop()
        for buffer in list(self.stream_buffers.values()):
            await buffer.close()

    async def _receive(self, data: bytes) -> None:
        # h2 parses everything it is given before returning events: a 64 KiB read of
        # HEADERS+RST_STREAM pairs is about 1,500 streams, tens of milliseconds during
        # which no other connection is served. Fed in slices, with a turn for the other
        # tasks in between, a flood is noticed (and the rest of the read never parsed)
        # after a few slices.
        for start in range(0, len(data), RECEIVE_SLICE):
            if self.closed or self._calming:
                return
            if start:
                await trio.lowlevel.checkpoint()
            await super().handle(RawData(data=data[start : start + RECEIVE_SLICE]))

    async def goodbye(self) -> None:
        """GOAWAY (NO_ERROR) on the socket, before the server closes an idle connection."""
        if not self.closed and not self.connection.closed:
            self.connection.close_connection()
            await self._flush()
            if self.write_coalescer is not None:
                await self.write_coalescer.flush()

    @property
    def busy(self) -> bool:
        return not self.idle

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Response):
            self._answered.add(event.stream_id)
        if isinstance(event, (Response, Body, Data)):
            self.flood.sent_response_bytes()
        elif isinstance(event, StreamClosed):
            await self._reset_if_unfinished(event.stream_id)
        if not await self._send_directly(event):
            await super().stream_send(event)
        if isinstance(event, Trailers) and self.connection.sending_side_closed(event.stream_id):
            self._trailers_sent.add(event.stream_id)

    async def _send_directly(self, event: StreamEvent) -> bool:
        """Write a body chunk, the end of the body or the trailers to h2 now, when the
        send task has nothing of this stream (its buffer is empty and the scheduler has
        it blocked, so the task is not in the middle of it) and the peer's flow-control
        window takes the chunk whole. False: hypercorn's path, through the send task."""
        if not isinstance(event, (Body, Data, EndBody, EndData, Trailers)):
            return False
        stream_id = event.stream_id
        buffer = self.stream_buffers.get(stream_id)
        if (
            buffer is None
            or buffer.buffer
            or buffer.complete
            or not self.scheduler.is_blocked(stream_id)
        ):
            return False
        connection = self.connection
        try:
            if isinstance(event, (Body, Data)):
                room = min(
                    connection.local_flow_control_window(stream_id),
                    connection.max_outbound_frame_size,
                )
                if len(event.data) > room:
                    return False
                connection.send_data(stream_id, event.data)
            elif isinstance(event, Trailers):
                connection.send_headers(stream_id, event.headers, end_stream=True)
            else:
                connection.end_stream(stream_id)
        except (h2.exceptions.ProtocolError, KeyError):
            return False  # closed meanwhile: hypercorn's path deals with it as it did
        if not isinstance(event, (Body, Data)):
            # The response is complete: what the send task does once it drained it.
            await buffer.close()
            del self.stream_buffers[stream_id]
            self.scheduler.remove_stream(stream_id)
        await self._flush()
        return True

    async def _window_updated(self, stream_id: int | None) -> None:
        # hypercorn unblocks every stream on a connection-level WINDOW_UPDATE (or a new
        # initial window size), and the send task then visits each one only to block it
        # again: per update, work in the number of open streams (idle watches included),
        # and a stream left unblocked misses the direct write above. Only a stream with
        # something held back (data, or its end) can use more window.
        buffers = self.stream_buffers
        if not stream_id:
            waiting = [sid for sid, buffer in buffers.items() if buffer.buffer or buffer.complete]
        elif stream_id in buffers and (buffers[stream_id].buffer or buffers[stream_id].complete):
            waiting = [stream_id]
        else:
            return
        for sid in waiting:
            self.scheduler.unblock(sid)
        if waiting:
            await self.has_data.set()

    async def _close_stream(self, stream_id: int) -> None:
        # hypercorn's, except that the send task is only woken when it has something of
        # the stream to drop (a response written directly left it nothing).
        self._answered.discard(stream_id)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            await stream.handle(StreamClosed(stream_id=stream_id))
            if stream_id in self.stream_buffers:
                await self.has_data.set()

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        await super()._create_stream(request)
        # Nothing was pushed yet: the app task has not run (no checkpoint since).
        self.stream_buffers[request.stream_id] = BoundedStreamBuffer()

    async def _reset_if_unfinished(self, stream_id: int) -> None:
        """The app is done with a stream whose response did not end (abandoned at a
        write timeout, or the handler failed mid-stream): ASGI has no way to say so, and
        hypercorn left the stream open on a live connection, its buffer held for good.
        RST_STREAM(CANCEL) tells the client; the send task then drops the buffer
        (issue 14)."""
        buffer = self.stream_buffers.get(stream_id)
        if (
            self.closed
            or buffer is None
            or buffer.complete  # every byte taken; the send task ends the stream
            or self.connection.sending_side_closed(stream_id)  # trailers ended it
        ):
            return
        self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        await buffer.close()
        try:
            self.priority.unblock(stream_id)  # its turn finds it closed and drops it
        except MissingStreamError:
            pass
        await self.has_data.set()
        await self._flush()

    async def _calm_down(self, reason: str) -> None:
        """Close the connection for a flood: GOAWAY ENHANCE_YOUR_CALM, one log line."""
        if self._calming:
            return
        self._calming = True
        log.warning("closing HTTP/2 connection from %s: %s", _peer(self.client), reason)
        self.connection.close_connection(
            error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"flood"
        )
        await self._flush()
        await self.send(Closed())

    async def _count(self, kind: Frames) -> bool:
        """Count a cheap frame; True when the connection is being closed for it."""
        reason = self.flood.count(kind)
        if reason is not None:
            await self._calm_down(reason)
        return self._calming

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # hypercorn's loop, one event at a time, with each stream looked up when reached
        # (a stream may be created or forgotten earlier in the same batch).
        reset_here = {
            e.stream_id for e in events if isinstance(e, h2.events.StreamReset) and e.remote_reset
        }
        for event in events:
            if self.closed or self._calming:
                return  # the connection closed under this batch (a send found it gone)
            if isinstance(event, h2.events.RequestReceived):
                await self._request_received(event, reset_here)
            elif isinstance(event, h2.events.DataReceived):
                await self._data_received(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._trailers_sent.discard(event.stream_id)
                stream = self.streams.get(event.stream_id)
                if stream is not None:  # else answered already: nothing to do
                    await stream.handle(EndBody(stream_id=event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                self._trailers_sent.discard(event.stream_id)
                unanswered = event.stream_id in self.streams and (
                    event.stream_id not in self._answered
                )
                if event.remote_reset and unanswered and await self._count(Frames.EARLY_RESET):
                    return
                await self._close_stream(event.stream_id)
                buffer = self.stream_buffers.get(event.stream_id)
                if buffer is not None:
                    # Nothing more can be sent: a writer waiting for a window of 0 (which
                    # a bounded buffer makes it do) must not wait for the send task.
                    await buffer.close()
                await self._window_updated(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                await self._window_updated(event.stream_id)
            elif isinstance(event, h2.events.PriorityUpdated):
                await self._priority_updated(event)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if await self._count(Frames.SETTINGS):
                    return
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    await self._window_updated(None)
            elif isinstance(event, h2.events.PingReceived):
                if await self._count(Frames.PING):
                    return
            elif isinstance(event, h2.events.ConnectionTerminated):
                await self.send(Closed())
        await self._flush()

    async def _request_received(
        self, event: h2.events.RequestReceived, reset_here: set[int]
    ) -> None:
        self.flood.stream_opened()
        if event.stream_id in reset_here:
            # Opened and reset in the same read: nothing to start, nothing to answer.
            await self._count(Frames.EARLY_RESET)
            return
        if self.context.terminated.is_set():
            # Shutting down: not processed, so the client may retry it elsewhere.
            self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            if not self._refusing:
                self._refusing = True
                self.connection.update_settings(
                    {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0}
                )
        else:
            await self._create_stream(event)
            await self.send(Updated(idle=False))
        if self.keep_alive_requests > self.config.keep_alive_max_requests:
            self.connection.close_connection()

    async def _data_received(self, event: h2.events.DataReceived) -> None:
        if not event.data and event.stream_ended is None:
            if await self._count(Frames.EMPTY_DATA):
                return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            await stream.handle(Body(stream_id=event.stream_id, data=event.data))
        elif event.flow_controlled_length and event.stream_id in self._trailers_sent:
            # Every response byte is out (trailers go last): tell the client to stop
            # uploading, as grpc-go does (RFC 9113 8.1).
            self._trailers_sent.discard(event.stream_id)
            self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)


class RpcH11Protocol(H11Protocol):
    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        task_group: TaskGroup,
        connection_state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Send,
        *,
        options: ServerOptions,
    ) -> None:
        super().__init__(
            app, config, context, task_group, connection_state, ssl, client, server, send
        )
        self._closed = False

    @property
    def busy(self) -> bool:
        """A request is being read or answered, or the next one has begun to arrive."""
        connection = self.connection
        if self.stream is not None or not isinstance(connection, h11.Connection):
            return True
        return connection.their_state is not h11.IDLE or bool(connection.trailing_data[0])

    def _next_request_arrived(self) -> bool:
        connection = self.connection
        return isinstance(connection, h11.Connection) and bool(connection.trailing_data[0])

    async def goodbye(self) -> None:
        pass  # HTTP/1.1 has no goodbye: closing an idle connection is the signal

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):
            self._closed = True
            try:
                await super().handle(event)
            finally:
                await self.can_read.set()  # a reader paused for the next request ends
        elif not self._closed:
            await super().handle(event)

    async def stream_send(self, event: StreamEvent) -> None:
        if (
            isinstance(event, Response)
            and event.status_code >= 200
            and self.context.terminated.is_set()
            and not self._next_request_arrived()
        ):
            # The last answer on this connection: say so, so the client does not send more.
            event = Response(
                stream_id=event.stream_id,
                headers=[*event.headers, (b"connection", b"close")],
                status_code=event.status_code,
            )
        await super().stream_send(event)

    async def _handle_events(self) -> None:
        # hypercorn's loop, which stops once the connection is closed.
        while not self._closed:
            if self.connection.they_are_waiting_for_100_continue:
                await self._send_h11_event(
                    h11.InformationalResponse(
                        status_code=100, headers=self.config.response_headers("h11")
                    )
                )
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_error_response(error.error_status_hint)
                await self.send(Closed())
                break
            if isinstance(event, h11.Request):
                await self.send(Updated(idle=False))
                await self._check_protocol(event)
                await self._create_stream(event)
            elif event is h11.PAUSED:
                await self.can_read.clear()
                await self.can_read.wait()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.NEED_DATA:
                break
            elif self.stream is None:
                break
            elif isinstance(event, h11.Data):
                await self.stream.handle(Body(stream_id=1, data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self.stream.handle(EndBody(stream_id=1))
            elif isinstance(event, Data):
                await self.stream.handle(event)  # WebSocket pass-through

    async def _maybe_recycle(self) -> None:
        connection = self.connection
        if (
            self.context.terminated.is_set()
            and isinstance(connection, h11.Connection)
            and connection.our_state is h11.DONE
            and connection.their_state is h11.DONE
            and self._next_request_arrived()
        ):
            # Shutting down, and the next request has arrived already: it was read, so
            # it is answered (the app refuses it) rather than dropped with the socket.
            await self._close_stream()
            connection.start_next_cycle()
            await self.can_read.set()
            return
        await super()._maybe_recycle()


RpcProtocol = RpcH2Protocol | RpcH11Protocol


class RpcProtocolWrapper:
    """hypercorn's ``ProtocolWrapper`` choosing our protocols (same selection rules)."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        task_group: TaskGroup,
        state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Send,
        alpn_protocol: str | None = None,
        *,
        options: ServerOptions,
    ) -> None:
        self._args = (app, config, context, task_group, state, ssl, client, server, send)
        self._options = options
        self.protocol: RpcProtocol = (
            self._h2() if alpn_protocol == "h2" else RpcH11Protocol(*self._args, options=options)
        )

    def _h2(self) -> RpcH2Protocol:
        return RpcH2Protocol(*self._args, options=self._options)

    async def initiate(self) -> None:
        await self.protocol.initiate()

    async def handle(self, event: Event) -> None:
        try:
            await self.protocol.handle(event)
        except H2ProtocolAssumedError as error:  # h2c with prior knowledge
            self.protocol = self._h2()
            await self.protocol.initiate()
            if error.data != b"":
                await self.protocol.handle(RawData(data=error.data))
        except H2CProtocolRequiredError as error:  # h2c upgrade from HTTP/1.1
            self.protocol = self._h2()
            await self.protocol.initiate(error.headers, error.settings)
            if error.data != b"":
                await self.protocol.handle(RawData(data=error.data))


__all__ = ["RpcH2Protocol", "RpcH11Protocol", "RpcProtocolWrapper", "ServerOptions"]
