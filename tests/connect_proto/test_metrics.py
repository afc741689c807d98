"""Prometheus metrics: the observer's series, and /metrics served in-process and over a socket."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from types import SimpleNamespace

import httpx
import trio
from asgi_driver import call_app
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from proto_calls import CONNECT_STREAM, CONNECT_UNARY, GRPC, SVC, call
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto import Code
from connect_proto._app.app import ConnectApp
from connect_proto._extras.metrics import DEFAULT_BUCKETS, RpcMetrics, metrics_app
from connect_proto._hooks import CallOutcome
from connect_proto._server.serve import make_config, serve
from connect_proto._service import RpcRoute


def make() -> tuple[ConnectApp, CollectorRegistry]:
    registry = CollectorRegistry()
    app = ConnectApp(
        [(TEST_SERVICE, TestServiceImpl())],
        observers=[RpcMetrics(registry)],
        http_routes={"/metrics": metrics_app(registry)},
    )
    return app, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_requests_codes_latency_and_messages() -> None:
    app, registry = make()
    echo, count = f"{SVC}/Echo", f"{SVC}/Count"
    for _ in range(3):
        await call(app, GRPC, echo, test_pb2.EchoRequest())
    await call(app, CONNECT_UNARY, f"{SVC}/Fail", test_pb2.FailRequest(code=5))
    await call(app, CONNECT_STREAM, count, test_pb2.CountRequest(count=4))
    await call_app(app, path="/unknown", headers=GRPC.headers())  # 404: not labelled
    grpc_echo = {"method": echo, "protocol": "grpc"}
    assert value(registry, "rpc_server_started_total", **grpc_echo) == 3
    assert value(registry, "rpc_server_handled_total", **grpc_echo, code="ok") == 3
    assert (
        value(
            registry,
            "rpc_server_handled_total",
            method=f"{SVC}/Fail",
            protocol="connect",
            code="not_found",
        )
        == 1
    )
    assert value(registry, "rpc_server_handling_seconds_count", **grpc_echo) == 3
    assert value(registry, "rpc_server_handling_seconds_bucket", **grpc_echo, le="+Inf") == 3
    stream = {"method": count, "protocol": "connect"}
    assert value(registry, "rpc_server_messages_sent_total", **stream) == 4
    assert value(registry, "rpc_server_messages_received_total", **stream) == 1
    assert value(registry, "rpc_server_open_streams", **stream) == 0
    labelled = {
        s.labels.get("method")
        for metric in registry.collect()
        for s in metric.samples
        if "method" in s.labels
    }
    assert "/unknown" not in labelled


async def test_open_streams_gauge_while_streaming() -> None:
    app, registry = make()
    labels = {"method": f"{SVC}/Count", "protocol": "grpc"}
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(
                call, app, GRPC, f"{SVC}/Count", test_pb2.CountRequest(count=2, delay_ms=100)
            )
        await trio.sleep(0.05)
        assert value(registry, "rpc_server_open_streams", **labels) == 2
    assert value(registry, "rpc_server_open_streams", **labels) == 0


async def test_application_metrics_share_the_registry_and_metrics_app() -> None:
    app, registry = make()
    resyncs = Counter("actions_resyncs", "Resyncs.", registry=registry)
    resyncs.inc(2)
    await call(app, GRPC, f"{SVC}/Echo", test_pb2.EchoRequest())
    response = await call_app(app, path="/metrics", method="GET")
    assert response.status == 200
    assert response.header("content-type").startswith("text/plain; version=0.0.4")
    text = response.body.decode()
    assert "actions_resyncs_total 2.0" in text
    assert f'rpc_server_handled_total{{code="ok",method="{SVC}/Echo",protocol="grpc"}} 1.0' in text
    head = await call_app(app, path="/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.header("content-length")) > 0
    post = await call_app(app, path="/metrics", method="POST")
    assert post.status == 405


async def test_metrics_over_a_socket(nursery: trio.Nursery) -> None:
    app, _ = make()
    port = await nursery.start(serve, app, make_config("127.0.0.1", 0))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        reply = await client.post(
            f"{SVC}/Get", content=b'{"name":"m"}', headers={"content-type": "application/json"}
        )
        assert reply.status_code == 200
        text = (await client.get("/metrics")).text
    assert f'rpc_server_started_total{{method="{SVC}/Get",protocol="connect"}} 1.0' in text, text
    nursery.cancel_scope.cancel()


def test_registries_are_not_shared() -> None:
    first, second = RpcMetrics(), RpcMetrics()
    assert first.registry is not second.registry


def _library_metrics(registry: CollectorRegistry) -> Callable[[RpcRoute, str, CallOutcome], None]:
    """The same series with prometheus_client's own Counter, Gauge and Histogram."""
    labels = ("method", "protocol")
    started = Counter("rpc_server_started", "RPCs accepted.", labels, registry=registry)
    handled = Counter(
        "rpc_server_handled", "RPCs completed, by status code.", (*labels, "code"),
        registry=registry,
    )  # fmt: skip
    duration = Histogram(
        "rpc_server_handling_seconds", "RPC duration from acceptance to the final status.",
        labels, buckets=DEFAULT_BUCKETS, registry=registry,
    )  # fmt: skip
    open_streams = Gauge(
        "rpc_server_open_streams", "Response streams open now.", labels, registry=registry
    )
    received = Counter(
        "rpc_server_messages_received", "Request messages received.", labels, registry=registry
    )
    sent = Counter("rpc_server_messages_sent", "Response messages sent.", labels, registry=registry)

    def one_call(route: RpcRoute, protocol: str, outcome: CallOutcome) -> None:
        key = (route.path, protocol)
        started.labels(*key).inc()
        duration.labels(*key).observe(outcome.duration)
        received.labels(*key).inc(outcome.messages_received)
        sent.labels(*key).inc(outcome.messages_sent)
        open_streams.labels(*key).inc(0)
        handled.labels(*key, outcome.code_name).inc()

    return one_call


def test_the_series_read_as_the_client_librarys_own_types_would() -> None:
    # RpcMetrics keeps plain numbers and builds its series when scraped; what a scrape
    # reads must be what Counter, Gauge and Histogram give for the same calls (bucket
    # edges included: a duration equal to a bound counts in that bound's bucket).
    ours, reference = RpcMetrics(), CollectorRegistry()
    library = _library_metrics(reference)
    rng = random.Random(7)
    routes = list(ConnectApp([(TEST_SERVICE, TestServiceImpl())]).dispatcher.routes.values())
    durations = [*DEFAULT_BUCKETS, 0.0, 0.00049, 61.0]
    for _ in range(2000):
        route = rng.choice(routes)
        ctx = SimpleNamespace(protocol=rng.choice(["grpc", "connect", "grpc-web"]))
        outcome = CallOutcome(
            code=rng.choice([None, Code.NOT_FOUND, Code.INTERNAL]),
            duration=rng.choice([*durations, rng.random() * 3]),
            messages_received=rng.randint(0, 3),
            messages_sent=rng.randint(0, 3),
        )
        ours.call_started(route, ctx)  # type: ignore[arg-type]
        ours.call_finished(route, ctx, outcome)  # type: ignore[arg-type]
        library(route, ctx.protocol, outcome)

    def scrape(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(re.sub(r"(_created\S*) \S+$", r"\1 T", line) for line in text.splitlines())

    assert scrape(ours.registry) == scrape(reference)
