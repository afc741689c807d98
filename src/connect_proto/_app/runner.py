"""The I/O half of a call: read the body, run the handler under its deadline, write events.

Everything protocol-specific lives in the ``ServerCall``; this module only moves bytes
between ASGI and the call, enforces the deadline with a cancel scope, and cancels the
handler when the client goes away.

Every write has an end. A client may stop reading (an HTTP/2 flow-control window of 0)
or leave without the server's writer noticing: hypercorn's ``send`` then waits for its
stream buffer to drain, which never happens once the connection's writer has stopped.
So each write is abandoned when the client disconnects (``http.disconnect``, watched
while the write waits) or when it has not completed within ``write_timeout``; the call
then ends without another byte, its slot and task freed.
"""

from __future__ import annotations

import logging
import types
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import trio
from google.protobuf.message import Message

from connect_proto._app.shutdown import ShutdownSignal, shutting_down_error
from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._hooks import Interceptor
from connect_proto._service import MethodKind, RpcRoute
from connect_proto._types import AsgiEvent, AsgiReceive, AsgiSend
from connect_proto._wire.protocol import ServerCall

log = logging.getLogger("connect_proto")


# Bounded drain of an unread HTTP/1.1 request body after an early answer: past these,
# we ask for the connection to be closed instead.
DRAIN_MAX_BYTES = 1024 * 1024
DRAIN_MAX_SECONDS = 1.0

# A response write (one stream message, or the final status) that has not been taken
# by the server within this many seconds is abandoned along with its call: the client
# is not reading. Generous next to any live network; what a stalled client can hold.
WRITE_TIMEOUT = 30.0
# How long a write may still take after the client's disconnect was seen.
DISCONNECT_GRACE = 0.5


class ClientDisconnected(Exception):
    """The client went away (ASGI ``http.disconnect``)."""


class WriteStalled(Exception):
    """A response write did not complete within the write timeout: the client is not
    reading. Raised out of a streaming handler's ``send``; the call ends unanswered."""


class RequestBody:
    """The single reader of ASGI ``receive``: body chunks, then disconnect watching."""

    __slots__ = ("_receive", "complete", "disconnected")

    def __init__(self, receive: AsgiReceive) -> None:
        self._receive = receive
        self.complete = False
        self.disconnected = False

    async def read(self) -> bytes:
        """The next body chunk (maybe empty); check ``complete`` for the end."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            raise ClientDisconnected
        if not message.get("more_body", False):
            self.complete = True
        body: bytes = message.get("body", b"")
        return body

    async def wait_disconnect(self) -> None:
        """Discard body chunks until the client disconnects."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return

    async def drain(self, declared_length: str | None = None) -> bool:
        """Discard the rest of the body, within bounds; True if it all arrived.

        A Content-Length already past the bound is not waited for at all.
        """
        if declared_length is not None:
            declared = declared_length.strip()
            if declared.isdigit() and int(declared) > DRAIN_MAX_BYTES:
                return False
        seen = 0
        with trio.move_on_after(DRAIN_MAX_SECONDS):
            try:
                while not self.complete and seen <= DRAIN_MAX_BYTES:
                    seen += len(await self.read())
            except ClientDisconnected:
                return False
        return self.complete


@types.coroutine
def await_watching(awaitable: Awaitable[Any], watch: Callable[[], None]) -> Any:
    """``await awaitable``, calling ``watch()`` the first time it suspends.

    Spawning the disconnect watcher and cancelling it again costs more than a small
    unary handler (about half of an in-process Echo call); a handler that answers
    without blocking (a cache hit, a validation error) cannot be interrupted by a
    disconnect anyway, so it never needs one. This delegates exactly as ``await`` does
    (send, throw), only noticing the first trap.
    """
    coro: Any = awaitable.__await__()
    value: Any = None
    error: BaseException | None = None
    watching = False
    while True:
        try:
            if error is None:
                trap = coro.send(value)
            else:
                trap, error = coro.throw(error), None
        except StopIteration as stop:
            return stop.value
        if not watching:
            watching = True
            watch()
        try:
            value = yield trap
        except BaseException as exc:  # Cancelled, KeyboardInterrupt, GeneratorExit: pass on
            value, error = None, exc


def _ignore() -> None:
    pass


class SharedWatch:
    """What the calls of one app share while its lifespan runs: a nursery for the
    disconnect watchers of unary calls, and the unary calls that have been waiting
    (handler or final write) and since when. The app's sweeper starts the watcher of any
    call still waiting after a grace; a unary call that never waits that long (nearly
    all) then costs no nursery and no task."""

    __slots__ = ("nursery", "pending")

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.pending: dict[CallRunner, float] = {}


def first_rpc_error(exc: BaseException) -> RpcError | None:
    """The RpcError inside ``exc`` (handlers may raise it out of a nursery), if any."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_rpc_error(inner)
            if found is not None:
                return found
    return None


def _only(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


class RequestStream:
    """Async iterator of request messages for client- and bidi-streaming handlers."""

    def __init__(self, call: ServerCall, body: RequestBody, on_eof: Callable[[], None]) -> None:
        self._call = call
        self._body = body
        self._pending: deque[Message] = deque()
        self._done = False
        self._on_eof = on_eof
        self.count = 0  # messages handed to the handler

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        while not self._pending:
            if self._done:
                raise StopAsyncIteration
            chunk = await self._body.read()
            self._pending.extend(self._call.feed(chunk))
            if self._body.complete:
                self._pending.extend(self._call.eof())
                self._done = True
                self._on_eof()
        self.count += 1
        return self._pending.popleft()


async def read_single(call: ServerCall, body: RequestBody) -> Message:
    """The one request message of a unary or server-streaming call."""
    messages: list[Message] = []
    while not body.complete:
        messages += call.feed(await body.read())
        if len(messages) > 1:
            break
    else:
        messages += call.eof()
    if len(messages) != 1:
        what = "no request message" if not messages else "more than one request message"
        raise RpcError(Code.UNIMPLEMENTED, f"protocol error: {what} for a unary request")
    return messages[0]


class StreamSender:
    """A response-streaming handler's ``send``: ``await send(message)`` writes one
    message; ``await send.many(messages)`` writes several, in order, in one body write
    (one flow-control wait and one write bound for all of them, e.g. a snapshot)."""

    __slots__ = ("_runner",)

    def __init__(self, runner: CallRunner) -> None:
        self._runner = runner

    async def __call__(self, message: Message) -> None:
        await self._runner.send_messages((message,))

    async def many(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._runner.send_messages(messages)


class CallRunner:
    """Runs one accepted call to completion.

    ``interceptors`` run first, inside the deadline; then ``refusal`` (decided by the app
    before the call started, e.g. shutdown) ends the call if set; then ``admit`` (e.g. a
    stream limit) may refuse it or take a slot, so that a call the interceptors refuse
    never holds a limited resource. ``admitted`` tells the app to give the slot back.
    Stream handlers run in a scope from ``shutdown``, so a server shutdown ends them with
    UNAVAILABLE. Every write is bounded by ``write_timeout`` and abandoned at a
    disconnect (see the module docstring). With ``shared`` (the app's lifespan is
    running), a unary call runs in the ASGI task itself and watches for a disconnect only
    once it has waited a while (see ``SharedWatch``); other calls, and every call
    without it, watch from a nursery of their own. Afterwards ``error``, ``completed``,
    ``abandoned`` and the message counts tell observers how the call ended.
    """

    def __init__(
        self,
        call: ServerCall,
        route: RpcRoute,
        ctx: RequestContext,
        receive: AsgiReceive,
        send: AsgiSend,
        *,
        interceptors: tuple[Interceptor, ...] = (),
        refusal: RpcError | None = None,
        admit: Callable[[], RpcError | None] | None = None,
        shutdown: ShutdownSignal | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        shared: SharedWatch | None = None,
    ) -> None:
        self.call = call
        self.route = route
        self.ctx = ctx
        self.body = RequestBody(receive)
        self._send = send
        self._close = False  # add "connection: close" to the head (HTTP/1.1)
        self._http1 = call.request.http_version.startswith("1")
        self._interceptors = interceptors
        self._refusal = refusal
        self._admit = admit
        self._shutdown = shutdown
        self._write_timeout = write_timeout
        self._shared = shared
        self._watcher: trio.Nursery | None = None  # where the disconnect watcher runs
        self._watching = False
        self._watch_scope: trio.CancelScope | None = None  # the watcher's, once started
        self._handler_scope: trio.CancelScope | None = None
        self._write_scope: trio.CancelScope | None = None  # the final write, while it waits
        self._sending = False  # inside the server's send
        self._deferred: list[trio.CancelScope] = []  # to cancel once the send returns
        self.admitted = False  # ``admit`` took a slot for this call
        self.error: RpcError | None = None  # the status the call ended with (None = OK)
        self.completed = False  # the final status was handed to the server
        self.abandoned = False  # a write stalled past the timeout; nothing more was sent
        self.messages_received = 0
        self.messages_sent = 0

    async def emit(self, events: list[AsgiEvent]) -> None:
        self._sending = True
        try:
            for event in events:
                if event["type"] == "http.response.start":
                    if self._close:
                        event["headers"] = [*event["headers"], (b"connection", b"close")]
                    await self._send(event)
                    self.call.head_sent = True
                else:
                    await self._send(event)
        finally:
            self._sending = False
            self._cancel_deferred()

    def _cancel_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for scope in deferred:
            scope.cancel()

    async def run(self) -> None:
        shared = self._shared
        if shared is not None and self.route.kind is MethodKind.UNARY:
            # A nursery and a task per call cost more than a small handler; the watcher,
            # if this call ever waits long enough to need one, runs in the shared nursery.
            self._watcher = shared.nursery
            try:
                await self._run()
            finally:
                self._watcher = None
                shared.pending.pop(self, None)
                if self._watch_scope is not None:
                    self._watch_scope.cancel()
            return
        self._shared = None  # a streaming call watches at once, from its own nursery
        async with trio.open_nursery() as nursery:
            self._watcher = nursery
            try:
                await self._run()
            finally:
                self._watcher = None
                nursery.cancel_scope.cancel()  # the disconnect watcher, if started

    async def _run(self) -> None:
        call = self.call
        error: RpcError | None = None
        final: list[AsgiEvent] | None = None
        try:
            timeout = call.negotiate()
        except RpcError as exc:
            await self._finish_early(exc)
            return
        if timeout is not None:
            self.ctx.deadline = trio.current_time() + timeout
        scope = self._handler_scope = trio.CancelScope(deadline=self.ctx.deadline)
        with scope:
            try:
                final = await self._invoke(self._watch if self._shared is None else self._wait)
            except ClientDisconnected:
                self.body.disconnected = True
            except WriteStalled:
                self._abandon()
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if _only(exc, trio.Cancelled):
                    raise
                if _only(exc, ClientDisconnected):
                    self.body.disconnected = True
                elif _only(exc, (WriteStalled, ClientDisconnected)):
                    self._abandon()
                else:
                    error = first_rpc_error(exc)
                    if error is None:
                        if not isinstance(exc, Exception | BaseExceptionGroup):
                            raise
                        log.exception("handler for %s failed", self.route.path)
                        error = RpcError(Code.INTERNAL, "internal error")
            else:
                if final is not None and not scope.cancel_called:
                    # The usual unary answer is written in this same scope, its deadline
                    # now the write's: one cancel scope per call, not two.
                    self._handler_scope = None
                    scope.deadline = trio.current_time() + self._write_timeout
                    await self._answer_in_scope(scope, final)
                    return
        self._handler_scope = None
        # One turn for the connection's other tasks between the handler and its answer,
        # as when the handler ran in a nursery of its own: the server reads the rest of
        # the client's frames (a PING sent with the request) before the answer goes out.
        await trio.lowlevel.checkpoint()
        if self.body.disconnected or self.abandoned:
            return  # the client is gone or not reading: write nothing more
        if scope.cancelled_caught and error is None and final is None:
            error = RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        if error is not None:
            await self._finish_early(error)
        elif final is not None:
            await self._emit_final(final)
            self.messages_sent = 1
        else:
            await self._emit_final(call.end_events(None, self.ctx))

    async def _answer_in_scope(self, scope: trio.CancelScope, events: list[AsgiEvent]) -> None:
        """Write a unary answer inside ``scope`` (re-armed with the write timeout; the
        caller's ``with`` catches its cancellation), as ``_emit_final`` would."""
        self._write_scope = scope
        self.messages_sent = 1
        try:
            # No scheduler turn first: the server hands a read's frames to h2 without
            # yielding per event (4 KiB at a time), so what came with the request (a
            # PING) was usually read already; if not, it is answered right after.
            if not self.body.disconnected:
                await await_watching(self._emit_final_events(events), self._final_watch())
        finally:
            self._write_scope = None
            if scope.cancel_called and not self.body.disconnected and not self.completed:
                self._abandon()

    def _abandon(self) -> None:
        self.abandoned = True
        # DEBUG: under abuse this is one line per call, and the access log has the call.
        log.debug(
            "abandoned %s: the client read nothing for %.0f s", self.route.path, self._write_timeout
        )

    def _watch(self) -> None:
        """Start watching for the client's disconnect (once; from the first wait on)."""
        if self._watching or self._watcher is None:
            return
        self._watching = True
        scope = self._watch_scope = trio.CancelScope()
        try:
            self._watcher.start_soon(self._watch_disconnect, scope)
        except RuntimeError:
            # The shared nursery closed (the lifespan ended): no watcher; the deadline
            # and the write timeout still bound the call.
            pass

    def _wait(self) -> None:
        """A unary call waits (handler or final write): the sweeper watches it if it is
        still waiting after a grace."""
        shared = self._shared
        if shared is not None and not self._watching:
            shared.pending.setdefault(self, trio.current_time())

    async def _watch_disconnect(self, watch_scope: trio.CancelScope) -> None:
        with watch_scope:
            try:
                await self.body.wait_disconnect()
            except Exception:  # the server's receive failing: treat as gone
                self.body.disconnected = True
            scopes = [s for s in (self._handler_scope, self._write_scope) if s is not None]
            if not self._sending:
                for scope in scopes:
                    scope.cancel()
                return
            # The call is inside hypercorn's send, which may be the very code that told
            # us: a connection found closed during a write is cleaned up (every stream
            # told of the disconnect) in the writing task. Cancelling there would cut
            # that short and leave other calls never told, so the cancel waits for the
            # send to return; a send still waiting after the grace is parked on a
            # connection that is gone.
            self._deferred += scopes
            await trio.sleep(DISCONNECT_GRACE)
            self._cancel_deferred()

    async def _finish_early(self, error: RpcError) -> None:
        """End with an error, draining an unread HTTP/1.1 body first (or closing)."""
        self.error = error
        if not self.body.complete and self._http1:
            if not self.body.disconnected and not self.call.head_sent:
                declared = self.call.request.headers.get("content-length")
                self._close = not await self.body.drain(declared)
        if self.body.disconnected:
            return
        await self._emit_final(self.call.end_events(error, self.ctx))

    async def _emit_final(self, events: list[AsgiEvent]) -> None:
        """Write the final events; bounded by the write timeout, and abandoned when the
        client disconnects while the write waits.

        Watching costs a task, about as much as a small call itself, and nearly every
        write completes in a moment, so the watcher starts late: a unary call whose write
        waits is entered in ``shared.pending`` (the app's sweeper starts the watcher of
        any still waiting a little later); without a sweeper it starts at the first wait. Answered
        before the request body ended, an HTTP/2 call watches at once: the watcher also
        keeps reading the body, whose unread chunks would otherwise fill the small
        channel hypercorn queues them in, and its put of ``http.disconnect`` (made
        inside our final send) would block our own send and the connection's reader.
        """
        if self.body.disconnected:
            return
        watch = self._final_watch()
        with trio.move_on_after(self._write_timeout) as write_scope:
            self._write_scope = write_scope
            try:
                await await_watching(self._emit_final_events(events), watch)
            finally:
                self._write_scope = None
        if write_scope.cancelled_caught and not self.body.disconnected:
            self._abandon()

    def _final_watch(self) -> Callable[[], None]:
        """What a final write calls when it first waits (see ``_emit_final``)."""
        if self._http1:
            # hypercorn writes HTTP/1.1 responses to the socket shielded (only the
            # deadline bounds them) and reports a disconnect only once they are written.
            return _ignore
        if self._shared is None or not self.body.complete:
            return self._watch
        return self._wait

    def watch_now(self) -> None:
        """Start watching for the client's disconnect (the app's sweeper calls this for
        a unary call that has been waiting)."""
        self._watch()

    async def _emit_final_events(self, events: list[AsgiEvent]) -> None:
        try:
            await self.emit(events)
            self.completed = True
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # connection lost while finishing: nothing left to tell the client

    async def _invoke(self, watch: Callable[[], None]) -> list[AsgiEvent] | None:
        """Run the handler; return the final events of a unary response, else None."""
        route, call, ctx = self.route, self.call, self.ctx
        for interceptor in self._interceptors:
            await interceptor.intercept(route, ctx)
        if self._refusal is not None:
            raise self._refusal
        if self._admit is not None:
            refused = self._admit()
            if refused is not None:
                raise refused
            self.admitted = True
        kind = route.kind
        if kind is MethodKind.UNARY or kind is MethodKind.SERVER_STREAMING:
            request = await read_single(call, self.body)
            self.messages_received = 1
            # A deadline that already passed (timeout 0) must not run the handler.
            await trio.lowlevel.checkpoint_if_cancelled()
            if kind is MethodKind.UNARY:
                return self._unary_result(await await_watching(route.handler(request, ctx), watch))
            watch()
            await self._stream(route.handler, request)
            return None
        await trio.lowlevel.checkpoint_if_cancelled()
        requests = RequestStream(call, self.body, watch)
        try:
            if kind is MethodKind.CLIENT_STREAMING:
                return self._unary_result(await route.handler(requests, ctx))
            await self._stream(route.handler, requests)
        finally:
            self.messages_received = requests.count
        return None

    async def _stream(self, handler: Callable[..., Awaitable[None]], request: Any) -> None:
        """Run a response-streaming handler; a server shutdown ends it with UNAVAILABLE."""
        send = StreamSender(self)
        if self._shutdown is None:
            await handler(request, self.ctx, send)
            return
        with self._shutdown.stream_scope() as stop:
            await handler(request, self.ctx, send)
        if stop.cancelled_caught:
            raise shutting_down_error()

    def _unary_result(self, response: Any) -> list[AsgiEvent]:
        if not isinstance(response, self.route.output_type):
            log.error(
                "handler for %s returned %s, not %s",
                self.route.path,
                type(response).__name__,
                self.route.output_type.__name__,
            )
            raise RpcError(Code.INTERNAL, "internal error")
        # Rendered inside the deadline scope, written outside it, so a deadline can
        # never interrupt a half-written unary response.
        return self.call.unary_events(response, self.ctx)

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Write streamed response messages, in order; one body event for them all."""
        output_type = self.route.output_type
        for message in messages:
            if not isinstance(message, output_type):
                raise TypeError(
                    f"{self.route.path} streams {output_type.__name__}, "
                    f"not {type(message).__name__}"
                )
        if len(messages) == 1:
            events = self.call.message_events(messages[0], self.ctx)
        else:
            events = self.call.messages_events(messages, self.ctx)
        with trio.move_on_after(self._write_timeout) as write_scope:
            await self.emit(events)
        if write_scope.cancelled_caught:
            raise WriteStalled(self.route.path)
        self.messages_sent += len(messages)


__all__ = [
    "WRITE_TIMEOUT",
    "CallRunner",
    "ClientDisconnected",
    "RequestBody",
    "SharedWatch",
    "StreamSender",
    "WriteStalled",
    "first_rpc_error",
]
