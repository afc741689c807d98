"""Prometheus metrics: the observer's series, and /metrics served in-process and over a socket."""

from __future__ import annotations

import httpx
import trio
from asgi_driver import call_app
from prometheus_client import CollectorRegistry, Counter
from proto_calls import CONNECT_STREAM, CONNECT_UNARY, GRPC, SVC, call
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._extras.metrics import RpcMetrics, metrics_app
from connect_proto._server.serve import make_config, serve


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
