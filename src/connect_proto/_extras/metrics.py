"""Prometheus metrics for the RPC layer: an observer, and an ASGI ``/metrics`` app.

Series (``prefix`` defaults to ``rpc_server``)::

    rpc_server_started_total{method, protocol}            calls accepted
    rpc_server_handled_total{method, protocol, code}      calls ended; code "ok" or a
                                                          Connect code name
    rpc_server_handling_seconds{method, protocol}         histogram, accept to last byte
    rpc_server_open_streams{method, protocol}             server/bidi streams open now
    rpc_server_messages_received_total{method, protocol}  request messages
    rpc_server_messages_sent_total{method, protocol}      response messages

``method`` is the route path (``/pkg.Service/Method``); unknown paths are never
labelled (they are rejected before any route), so cardinality is bounded by the routes.
The registry is injected (default: a fresh one, not the process-global one) so an
application adds its own metrics to it and tests never share state::

    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)
    app = ConnectApp(..., observers=[metrics],
                     http_routes={"/metrics": metrics_app(registry)})
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from connect_proto._app.limits import STREAMING_KINDS
from connect_proto._context import RequestContext
from connect_proto._hooks import CallOutcome
from connect_proto._service import RpcRoute
from connect_proto._types import AsgiReceive, AsgiSend, Scope

# From 0.5 ms (an in-memory unary call) to a minute; long streams land in +Inf.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# The classic text format every Prometheus version scrapes; generate_latest's default
# output (names escaped to underscores) is exactly that format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RpcMetrics:
    """The metrics observer. Label children are cached per (method, protocol), so a call
    costs a dict lookup and a few increments, not a ``labels()`` resolution."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prefix: str = "rpc_server",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        labels = ("method", "protocol")
        reg = self.registry
        self.started = Counter(f"{prefix}_started", "RPCs accepted.", labels, registry=reg)
        self.handled = Counter(
            f"{prefix}_handled", "RPCs completed, by status code.", (*labels, "code"), registry=reg
        )
        self.duration = Histogram(
            f"{prefix}_handling_seconds",
            "RPC duration from acceptance to the final status.",
            labels,
            buckets=tuple(buckets),
            registry=reg,
        )
        self.open_streams = Gauge(
            f"{prefix}_open_streams", "Response streams open now.", labels, registry=reg
        )
        self.received = Counter(
            f"{prefix}_messages_received", "Request messages received.", labels, registry=reg
        )
        self.sent = Counter(
            f"{prefix}_messages_sent", "Response messages sent.", labels, registry=reg
        )
        self._children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._handled: dict[tuple[str, str, str], Any] = {}

    def _for(self, method: str, protocol: str) -> tuple[Any, ...]:
        key = (method, protocol)
        children = self._children.get(key)
        if children is None:
            children = (
                self.started.labels(method, protocol),
                self.duration.labels(method, protocol),
                self.open_streams.labels(method, protocol),
                self.received.labels(method, protocol),
                self.sent.labels(method, protocol),
            )
            self._children[key] = children
        return children

    def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        started, _, open_streams, _, _ = self._for(route.path, ctx.protocol)
        started.inc()
        if route.kind in STREAMING_KINDS:
            open_streams.inc()

    def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        _, duration, open_streams, received, sent = self._for(route.path, ctx.protocol)
        if route.kind in STREAMING_KINDS:
            open_streams.dec()
        duration.observe(outcome.duration)
        if outcome.messages_received:
            received.inc(outcome.messages_received)
        if outcome.messages_sent:
            sent.inc(outcome.messages_sent)
        key = (route.path, ctx.protocol, outcome.code_name)
        handled = self._handled.get(key)
        if handled is None:
            handled = self._handled[key] = self.handled.labels(*key)
        handled.inc()


def metrics_app(
    registry: CollectorRegistry,
) -> Callable[[Scope, AsgiReceive, AsgiSend], Awaitable[None]]:
    """An ASGI app serving ``registry`` in the Prometheus text format (GET or HEAD)."""

    async def app(scope: Scope, receive: AsgiReceive, send: AsgiSend) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"", [(b"allow", b"GET, HEAD")])
            return
        body = generate_latest(registry)
        headers = [(b"content-type", CONTENT_TYPE.encode())]
        await _respond(send, 200, b"" if method == "HEAD" else body, headers, len(body))

    return app


async def _respond(
    send: AsgiSend,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
) -> None:
    size = len(body) if length is None else length
    headers = [*headers, (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


__all__ = ["CONTENT_TYPE", "DEFAULT_BUCKETS", "RpcMetrics", "metrics_app"]
