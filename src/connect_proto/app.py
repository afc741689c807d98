"""``ConnectApp``: the ASGI 3 application serving Connect, gRPC and gRPC-Web on one port."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from connect_proto.codec import CODECS
from connect_proto.compression import COMPRESSORS, Compressor
from connect_proto.context import RequestContext
from connect_proto.cors import CorsPolicy
from connect_proto.dispatch import Accepted, Dispatcher, Reject, build_bindings
from connect_proto.headers import Headers
from connect_proto.protocol import CallConfig
from connect_proto.runner import CallRunner, Receive, RequestBody, Send
from connect_proto.service import route_table

log = logging.getLogger("connect_proto")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConnectApp:
    """Serves the given protobuf services over Connect, gRPC and gRPC-Web.

    ``lifespan`` is an async context manager factory entered on ASGI lifespan startup
    and exited on shutdown. ``http_routes`` maps exact paths to plain ASGI apps.
    ``compressors`` replaces the compressor registry (default: gzip); responses under
    ``compress_min_bytes`` are sent uncompressed. ``cors`` enables CORS for browsers.
    Routes, codecs and compressors are all resolved here, once.
    """

    def __init__(
        self,
        services: Iterable[tuple[ServiceDescriptor, object]],
        *,
        max_message_size: int = 4 * 1024 * 1024,
        lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        http_routes: Mapping[str, ASGIApp] | None = None,
        compressors: Mapping[str, Compressor] | None = None,
        compress_min_bytes: int = 1024,
        cors: CorsPolicy | None = None,
    ) -> None:
        self.dispatcher = Dispatcher(route_table(services), build_bindings(CODECS))
        self.config = CallConfig(
            max_message_size=max_message_size,
            compressors=dict(COMPRESSORS if compressors is None else compressors),
            compress_min_bytes=compress_min_bytes,
        )
        self._lifespan = lifespan
        self._cors = cors
        self._http_routes = dict(http_routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            route_app = self._http_routes.get(scope["path"])
            if route_app is not None:
                await route_app(scope, receive, send)
                return
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._run_lifespan(receive, send)
        # Websockets and other scope types are not served; returning closes them.

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        client = scope.get("client")
        ctx = RequestContext(
            method=request.route.path,
            protocol=decision.call_type.protocol,
            request_headers=headers,
            peer=(client[0], client[1]) if client else None,
        )
        call = decision.call_type(request, self.config)
        await CallRunner(call, request.route, ctx, receive, send).run()

    async def _reject(
        self, reject: Reject, http_version: str, headers: Headers, receive: Receive, send: Send
    ) -> None:
        raw = [*reject.headers, (b"content-length", str(len(reject.body)).encode())]
        if http_version.startswith("1") and not reject.close:
            # Keep-alive needs the unread body consumed; give up (and close) past a bound.
            if not await RequestBody(receive).drain(headers.get("content-length")):
                raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reject.status, "headers": raw})
        await send({"type": "http.response.body", "body": reject.body, "more_body": False})

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
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


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """Wrap ``send`` so the response head carries ``extra`` headers (CORS)."""

    async def wrapped(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            event = {**event, "headers": [*event.get("headers", ()), *extra]}
        await send(event)

    return wrapped
