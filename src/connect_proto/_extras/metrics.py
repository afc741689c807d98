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

import bisect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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


class _Series:
    """One (method, protocol)'s numbers, kept as plain numbers: the observer runs on the
    event loop's thread only, so it needs none of the client library's per-increment
    locks; the collector reads them when scraped."""

    __slots__ = ("buckets", "created", "open_streams", "received", "sent", "started", "sum")

    def __init__(self, bucket_count: int) -> None:
        self.created = time.time()
        self.started = 0
        self.open_streams = 0
        self.received = 0
        self.sent = 0
        self.buckets = [0] * bucket_count  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0


class RpcMetrics:
    """The metrics observer. A call costs a dict lookup and a few additions to plain
    numbers (``_Series``); the series are built when the registry is scraped, in the
    same text the client library's own Counter, Gauge and Histogram would give."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prefix: str = "rpc_server",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._prefix = prefix
        # +Inf is always the last bucket (a caller may list it, as for Histogram).
        self._bounds = tuple(float(b) for b in buckets if float(b) != float("inf"))
        if list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError("histogram buckets must be increasing")
        self._series: dict[tuple[str, str], _Series] = {}
        self._handled: dict[tuple[str, str, str], list[float]] = {}  # [count, created]
        self.registry.register(_Collector(self))

    def _for(self, method: str, protocol: str) -> _Series:
        key = (method, protocol)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(len(self._bounds) + 1)
        return series

    def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        series = self._for(route.path, ctx.protocol)
        series.started += 1
        if route.kind in STREAMING_KINDS:
            series.open_streams += 1

    def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        series = self._for(route.path, ctx.protocol)
        if route.kind in STREAMING_KINDS:
            series.open_streams -= 1
        # Prometheus buckets are "less than or equal": the first bound >= the duration.
        series.buckets[bisect.bisect_left(self._bounds, outcome.duration)] += 1
        series.sum += outcome.duration
        series.received += outcome.messages_received
        series.sent += outcome.messages_sent
        key = (route.path, ctx.protocol, outcome.code_name)
        handled = self._handled.get(key)
        if handled is None:
            handled = self._handled[key] = [0, time.time()]
        handled[0] += 1


# The ``le`` text the client library gives a bound (Go's float formatting).
_bound_label = cast(Callable[[float], str], floatToGoString)


class _Collector(Collector):
    """Builds RpcMetrics' series at scrape time."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        prefix, labels = m._prefix, ["method", "protocol"]
        started = CounterMetricFamily(f"{prefix}_started", "RPCs accepted.", labels=labels)
        handled = CounterMetricFamily(
            f"{prefix}_handled", "RPCs completed, by status code.", labels=[*labels, "code"]
        )
        duration = HistogramMetricFamily(
            f"{prefix}_handling_seconds",
            "RPC duration from acceptance to the final status.",
            labels=labels,
        )
        open_streams = GaugeMetricFamily(
            f"{prefix}_open_streams", "Response streams open now.", labels=labels
        )
        received = CounterMetricFamily(
            f"{prefix}_messages_received", "Request messages received.", labels=labels
        )
        sent = CounterMetricFamily(
            f"{prefix}_messages_sent", "Response messages sent.", labels=labels
        )
        bounds = [*(_bound_label(b) for b in m._bounds), "+Inf"]
        for key, series in list(m._series.items()):
            values = list(key)
            started.add_metric(values, series.started, created=series.created)
            received.add_metric(values, series.received, created=series.created)
            sent.add_metric(values, series.sent, created=series.created)
            open_streams.add_metric(values, series.open_streams)
            cumulative = list(itertools.accumulate(series.buckets))
            duration.add_metric(values, list(zip(bounds, cumulative, strict=True)), series.sum)
            # (the family's add_metric takes no creation time; Histogram's own has one)
            named = dict(zip(labels, values, strict=True))
            duration.samples.append(Sample(f"{duration.name}_created", named, series.created))
        for handled_key, (count, created) in list(m._handled.items()):
            handled.add_metric(list(handled_key), count, created=created)
        yield from (started, handled, duration, open_streams, received, sent)


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
