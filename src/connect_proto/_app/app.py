"""``ConnectApp``: the ASGI 3 application serving Connect, gRPC and gRPC-Web on one port."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import trio
from google.protobuf.descriptor import ServiceDescriptor

from connect_proto._app.limits import STREAMING_KINDS, StreamLimiter
from connect_proto._app.request_id import request_id_from
from connect_proto._app.runner import (
    DISCONNECT_GRACE,
    WRITE_TIMEOUT,
    CallRunner,
    RequestBody,
    SharedWatch,
)
from connect_proto._app.shutdown import ShutdownSignal, shutting_down_error
from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._extras.cors import CorsPolicy
from connect_proto._headers import Headers
from connect_proto._hooks import CallOutcome, Interceptor, Observer, bind_all, check_hooks
from connect_proto._service import RpcRoute, route_table
from connect_proto._types import AsgiApp, AsgiReceive, AsgiSend, Scope
from connect_proto._wire.codec import CODECS
from connect_proto._wire.compression import COMPRESSORS, Compressor
from connect_proto._wire.dispatch import Accepted, Dispatcher, Reject, build_bindings
from connect_proto._wire.protocol import CallConfig

log = logging.getLogger("connect_proto")

# How long a unary call (handler or final write) may wait before its disconnect watcher
# starts (and so, about, how long after its client left an abandoned write is noticed).
PENDING_WRITE_GRACE = 0.5


class ConnectApp:
    """Serves the given protobuf services over Connect, gRPC and gRPC-Web.

    ``lifespan`` is an async context manager factory entered on ASGI lifespan startup
    and exited on shutdown. ``http_routes`` maps exact paths to plain ASGI apps.
    ``compressors`` replaces the compressor registry (default: gzip); responses under
    ``compress_min_bytes`` are sent uncompressed. ``cors`` enables CORS for browsers.

    Production hooks (all off by default, and then free):

    - ``interceptors`` run in order before each handler and may refuse with RpcError
      (``connect_proto._extras.auth.BearerAuth`` is one); ``observers`` hear how each call ended
      (``connect_proto._extras.metrics.RpcMetrics``, ``connect_proto._extras.logs.AccessLog``).
    - ``request_id_header`` (e.g. ``"x-request-id"``): take the caller's id from that
      header when valid, else generate one; set ``ctx.request_id`` and echo it.
    - ``max_streams`` / ``max_streams_per_method`` / ``max_streams_per_connection``:
      bound the server streams (server and bidi streaming) open at once, in all, per
      method, per client connection; past a bound, RESOURCE_EXHAUSTED. A slot is taken
      only after the interceptors accepted the call.
    - ``write_timeout``: a response write the server has not taken within this many
      seconds (the client stopped reading) is abandoned with its call; a client's
      disconnect abandons it at once. Plain ``http_routes`` and early rejections (404,
      415, ...) get the same bound.

    ``begin_shutdown()`` ends open streams with UNAVAILABLE and refuses new calls with
    UNAVAILABLE; ``connect_proto._server.serve.serve`` calls it when it is stopped.
    Routes, codecs, compressors and hooks are all resolved here, once.
    """

    def __init__(
        self,
        services: Iterable[tuple[ServiceDescriptor, object]],
        *,
        max_message_size: int = 4 * 1024 * 1024,
        lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        http_routes: Mapping[str, AsgiApp] | None = None,
        compressors: Mapping[str, Compressor] | None = None,
        compress_min_bytes: int = 1024,
        cors: CorsPolicy | None = None,
        interceptors: Sequence[Interceptor] = (),
        observers: Sequence[Observer] = (),
        request_id_header: str | None = None,
        max_streams: int | None = None,
        max_streams_per_method: Mapping[str, int] | None = None,
        max_streams_per_connection: int | None = None,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.dispatcher = Dispatcher(route_table(services), build_bindings(CODECS))
        routes = self.dispatcher.routes
        self._interceptors = tuple(interceptors)
        self._observers = tuple(observers)
        check_hooks(self._interceptors, self._observers)
        self._limiter: StreamLimiter | None = None
        if max_streams is not None or max_streams_per_method or max_streams_per_connection:
            self._limiter = StreamLimiter(
                max_streams, max_streams_per_method, max_streams_per_connection
            )
        if write_timeout <= 0:
            raise ValueError("write_timeout must be > 0")
        self.write_timeout = write_timeout
        self.open_calls = 0  # RPCs accepted and not yet over
        # The lifespan's nursery for disconnect watchers and the unary calls waiting,
        # swept by a task that runs with the ASGI lifespan (None without one: then every
        # call watches from a nursery of its own, from its first wait).
        self._shared_watch: SharedWatch | None = None
        bind_all((*self._interceptors, *self._observers, self._limiter), routes)
        self._request_id_header = None if request_id_header is None else request_id_header.lower()
        self.shutdown = ShutdownSignal()
        self.config = CallConfig(
            max_message_size=max_message_size,
            compressors=dict(COMPRESSORS if compressors is None else compressors),
            compress_min_bytes=compress_min_bytes,
        )
        self._lifespan = lifespan
        self._cors = cors
        self._http_routes = dict(http_routes or {})

    @property
    def open_streams(self) -> int:
        """Server streams open now (only counted when a stream limit is configured)."""
        return 0 if self._limiter is None else self._limiter.open

    def begin_shutdown(self) -> None:
        """End every open server stream with UNAVAILABLE and refuse new calls.

        Unary calls already running are left to finish (the server's grace period
        bounds them). Idempotent; call from the trio thread.
        """
        if not self.shutdown.draining:
            log.info("shutdown begun: ending open streams with UNAVAILABLE")
        self.shutdown.begin()

    async def __call__(self, scope: Scope, receive: AsgiReceive, send: AsgiSend) -> None:
        kind = scope["type"]
        if kind == "http":
            route_app = self._http_routes.get(scope["path"])
            if route_app is not None:
                # Plain probes and scrapes: a client that stops reading costs at most this.
                with trio.move_on_after(self.write_timeout):
                    await route_app(scope, receive, send)
                return
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._run_lifespan(receive, send)
        # Websockets and other scope types are not served; returning closes them.

    async def _http(self, scope: Scope, receive: AsgiReceive, send: AsgiSend) -> None:
        headers = Headers.from_asgi(scope["headers"])
        http_version: str = scope.get("http_version", "1.1")
        if self._cors is not None:
            if self._cors.is_preflight(scope["method"], headers):
                status, raw = self._cors.preflight(headers)
                await self._reject(Reject(status, raw), http_version, headers, receive, send)
                return
            extra = self._cors.response_headers(headers)
            if extra:
                send = _with_headers(send, extra)
        decision = self.dispatcher.classify(
            scope["method"], scope["path"], http_version, headers, scope.get("query_string", b"")
        )
        if isinstance(decision, Reject):
            await self._reject(decision, http_version, headers, receive, send)
            return
        assert isinstance(decision, Accepted)
        request = decision.request
        route = request.route
        client = scope.get("client")
        ctx = RequestContext(
            method=route.path,
            protocol=decision.call_type.protocol,
            request_headers=headers,
            peer=(client[0], client[1]) if client else None,
        )
        if self._request_id_header is not None:
            ctx.request_id = request_id_from(headers.get(self._request_id_header))
            ctx.response_headers.add(self._request_id_header, ctx.request_id)
        refusal = shutting_down_error() if self.shutdown.draining else None
        limiter = self._limiter
        connection: Hashable = None
        admit: Callable[[], RpcError | None] | None = None
        if limiter is not None and route.kind in STREAMING_KINDS:
            connection = tuple(client) if client else None
            admit = partial(limiter.acquire, route.path, connection)
        runner = CallRunner(
            decision.call_type(request, self.config),
            route,
            ctx,
            receive,
            send,
            interceptors=self._interceptors,
            refusal=refusal,
            admit=admit,
            shutdown=self.shutdown,
            write_timeout=self.write_timeout,
            shared=self._shared_watch,
        )
        self.open_calls += 1
        if not self._observers and admit is None:
            try:
                await runner.run()  # the common, unobserved path: nothing else to do
            finally:
                self.open_calls -= 1
            return
        started = time.perf_counter()
        self._notify_started(route, ctx)
        try:
            await runner.run()
        finally:
            self.open_calls -= 1
            if runner.admitted:
                assert limiter is not None
                limiter.release(route.path, connection)
            if self._observers:
                if runner.completed:
                    code = None if runner.error is None else runner.error.code
                else:
                    code = Code.CANCELED  # client gone or call cancelled: no status sent
                outcome = CallOutcome(
                    code,
                    time.perf_counter() - started,
                    runner.messages_received,
                    runner.messages_sent,
                )
                self._notify_finished(route, ctx, outcome)

    def _notify_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        for observer in self._observers:
            try:
                observer.call_started(route, ctx)
            except Exception:
                # An observer is bookkeeping: its failure must not fail the call.
                log.exception("observer %r failed in call_started", observer)

    def _notify_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        for observer in self._observers:
            try:
                observer.call_finished(route, ctx, outcome)
            except Exception:
                log.exception("observer %r failed in call_finished", observer)

    async def _reject(
        self,
        reject: Reject,
        http_version: str,
        headers: Headers,
        receive: AsgiReceive,
        send: AsgiSend,
    ) -> None:
        raw = [*reject.headers, (b"content-length", str(len(reject.body)).encode())]
        body = RequestBody(receive)
        if http_version.startswith("1") and not reject.close:
            # Keep-alive needs the unread body consumed; give up (and close) past a bound.
            if not await body.drain(headers.get("content-length")):
                raw.append((b"connection", b"close"))
        # Bounded; over HTTP/2 also abandoned when the client leaves (the watcher keeps
        # reading an unread body too, as the runner's final write does).
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(self.write_timeout) as write_scope:

                async def abandon_on_disconnect() -> None:
                    try:
                        await body.wait_disconnect()
                    except Exception:
                        pass
                    await trio.sleep(DISCONNECT_GRACE)  # see CallRunner._watch_disconnect
                    write_scope.cancel()

                if not body.disconnected:
                    if not http_version.startswith("1"):
                        nursery.start_soon(abandon_on_disconnect)
                    await send(
                        {"type": "http.response.start", "status": reject.status, "headers": raw}
                    )
                    await send(
                        {"type": "http.response.body", "body": reject.body, "more_body": False}
                    )
            nursery.cancel_scope.cancel()

    async def _run_lifespan(self, receive: AsgiReceive, send: AsgiSend) -> None:
        async with trio.open_nursery() as nursery:
            shared = self._shared_watch = SharedWatch(nursery)
            nursery.start_soon(self._sweep_pending, shared.pending)
            try:
                await self._lifespan_protocol(receive, send)
            finally:
                self._shared_watch = None
                nursery.cancel_scope.cancel()

    async def _sweep_pending(self, pending: dict[CallRunner, float]) -> None:
        """Start the disconnect watcher of every unary call waiting longer than
        ``PENDING_WRITE_GRACE`` (see ``CallRunner._emit_final``)."""
        while True:
            await trio.sleep(PENDING_WRITE_GRACE)
            late = trio.current_time() - PENDING_WRITE_GRACE
            for runner, since in list(pending.items()):
                if since <= late:
                    del pending[runner]
                    runner.watch_now()

    async def _lifespan_protocol(self, receive: AsgiReceive, send: AsgiSend) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        if self._lifespan is None:
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        manager = self._lifespan()
        try:
            await manager.__aenter__()
        except Exception as exc:
            log.exception("lifespan startup failed")
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        try:
            while True:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    break
        except BaseException as exc:
            # Cancelled (or anything else) while serving: still exit the context.
            await manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            await manager.__aexit__(None, None, None)
        except Exception as exc:
            log.exception("lifespan shutdown failed")
            await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def _with_headers(send: AsgiSend, extra: list[tuple[bytes, bytes]]) -> AsgiSend:
    """Wrap ``send`` so the response head carries ``extra`` headers (CORS)."""

    async def wrapped(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            event = {**event, "headers": [*event.get("headers", ()), *extra]}
        await send(event)

    return wrapped
