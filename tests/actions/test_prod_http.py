"""The production wiring of ``actions.app`` over a real socket (hypercorn, trio worker):
probes, grpc.health.v1, reflection, Prometheus metrics, bearer auth on Connect and gRPC,
the watch-subscription cap, request ids and shutdown of open watches.

grpcio blocks its caller, so every grpcio call runs in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import trio
from actions_harness import aid, task_req, update_req
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub
from flyteidl2.common import phase_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from actions.app import ActionsApplication, OpenStore, open_memory_store
from actions.config import Config
from actions.store.base import Store
from connect_proto._client import ConnectClient
from connect_proto._errors import Code, RpcError
from connect_proto._server.serve import make_config
from connect_proto._server.serve import serve as serve_asgi

SVC = "/flyteidl2.actions.ActionsService/"
SERVICE_NAME = "flyteidl2.actions.ActionsService"
T = TypeVar("T")


@asynccontextmanager
async def running(
    config: Config | None = None,
    *,
    open_store: OpenStore = open_memory_store,
) -> AsyncIterator[tuple[int, ActionsApplication]]:
    application = ActionsApplication(config or Config(port=0), open_store=open_store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        try:
            yield port, application
        finally:
            nursery.cancel_scope.cancel()


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def grpc_health(port: int, service: str = "") -> int:
    with channel(port) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


async def wait_until(predicate: Callable[[], Any], seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not await predicate():  # noqa: ASYNC110 (polling a remote state)
            await trio.sleep(0.05)


class SwitchableStore:
    """A store whose ``ready()`` the test switches, as the Kubernetes store's follows the
    API server (unreachable, not synced yet)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.ok = False

    def ready(self) -> tuple[bool, str]:
        return (True, "ok") if self.ok else (False, "switched off by the test")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --------------------------------------------------------------------------- health


async def test_probes_and_grpc_health_follow_store_readiness() -> None:
    holder: list[SwitchableStore] = []

    async def switchable_store(config: Config) -> Store:
        store = SwitchableStore(await open_memory_store(config))
        holder.append(store)
        return store  # type: ignore[return-value]

    async with running(open_store=switchable_store) as (port, _):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            alive = await http.get("/healthz")
            assert (alive.status_code, alive.text) == (200, "ok\n")
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.text) == (503, "not ready: store\n")
            status = await in_thread(lambda: grpc_health(port))
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            status = await in_thread(lambda: grpc_health(port, SERVICE_NAME))
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING

            holder[0].ok = True

            async def is_ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_until(is_ready)
            verbose = await http.get("/readyz?verbose")
            assert verbose.text == "[+]store ok\n[+]watch ok\n[+]accepting ok\nok\n"

            async def serving() -> bool:
                status = await in_thread(lambda: grpc_health(port, SERVICE_NAME))
                return status == health_pb2.HealthCheckResponse.SERVING

            await wait_until(serving)

            # Watch sees SERVING, then NOT_SERVING when the store stops being reachable.
            def watch_two() -> list[int]:
                with channel(port) as ch:
                    stream = health_pb2_grpc.HealthStub(ch).Watch(
                        health_pb2.HealthCheckRequest(service=""), timeout=10
                    )
                    seen = [next(stream).status]
                    trio.from_thread.run_sync(lambda: setattr(holder[0], "ok", False))
                    seen.append(next(stream).status)
                    stream.cancel()
                    return seen

            assert await in_thread(watch_two) == [
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            ]
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.text) == (503, "not ready: store\n")
            holder[0].ok = True
            await wait_until(is_ready)


async def test_reflection_lists_every_service() -> None:
    async with running() as (port, _):

        def services() -> list[str]:
            with channel(port) as ch:
                return list(ProtoReflectionDescriptorDatabase(ch).get_services())

        found = await in_thread(services)
        assert {
            SERVICE_NAME,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= set(found)


# --------------------------------------------------------------------------- metrics


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_scrape_has_rpc_and_service_series_after_traffic() -> None:
    async with (
        running(Config(port=0, watch_workers=3)) as (port, _),
        ConnectClient(f"http://127.0.0.1:{port}") as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        await client.unary(SVC + "Enqueue", task_req(aid("c1"), parent="a0"), pb.EnqueueResponse)
        stream = client.server_stream(
            SVC + "WatchForUpdates",
            pb.WatchForUpdatesRequest(parent_action_id=aid("a0")),
            pb.WatchForUpdatesResponse,
        )
        with trio.fail_after(10):
            while not (await stream.__anext__()).HasField("control_message"):
                pass
            await client.unary(
                SVC + "Update", update_req(aid("c1"), phase_pb2.ACTION_PHASE_RUNNING),
                pb.UpdateResponse,
            )  # fmt: skip
            update = (await stream.__anext__()).action_update
        assert update.phase == phase_pb2.ACTION_PHASE_RUNNING

        def grpc_enqueue() -> None:
            with channel(port) as ch:
                ActionsServiceStub(ch).Enqueue(task_req(aid("c2"), parent="a0"), timeout=5)

        await in_thread(grpc_enqueue)
        response = await http.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(response.text)
        await stream.aclose()

    enqueue = {"method": SVC + "Enqueue", "protocol": "connect"}
    watch = {"method": SVC + "WatchForUpdates", "protocol": "connect"}
    assert _value(samples, "rpc_server_handled_total", code="ok", **enqueue) == 2
    assert _value(samples, "rpc_server_handled_total", code="ok", method=SVC + "Enqueue",
                  protocol="grpc") == 1  # fmt: skip
    assert _value(samples, "rpc_server_handling_seconds_count", **enqueue) == 2
    assert _value(samples, "rpc_server_handling_seconds_bucket", le="+Inf", **enqueue) == 2
    assert _value(samples, "rpc_server_open_streams", **watch) == 1
    assert _value(samples, "actions_watch_subscribers") == 1
    assert [_value(samples, "actions_watch_shard_depth", shard=str(i)) for i in range(3)] == [0] * 3
    assert _value(samples, "actions_watch_delivery_lag_seconds_count") >= 1  # type: ignore[operator]
    assert _value(samples, "actions_watch_updates_delivered_total") >= 1  # type: ignore[operator]
    for name in (
        "actions_watch_subscriber_resyncs_total",
        "actions_watch_restarts_total",
        "actions_kubernetes_relists_total",
        "actions_watch_events_received_total",
    ):
        assert _value(samples, name) is not None, name
    assert _value(samples, "actions_ready", check="store") == 1


# --------------------------------------------------------------------------- auth

TOKENS = """
tokens:
  - name: executor
    token: writer-token
    allow: ["/flyteidl2.actions.ActionsService/*"]
  - name: dashboard
    token: reader-token
    allow: ["/flyteidl2.actions.ActionsService/WatchForUpdates"]
"""

AUTH_CASES = [
    ("none", None, Code.UNAUTHENTICATED),
    ("unknown", "Bearer nobody-has-this", Code.UNAUTHENTICATED),
    ("not-permitted", "Bearer reader-token", Code.PERMISSION_DENIED),
    ("ok", "Bearer writer-token", None),
]


async def test_bearer_auth_outcomes_on_connect_and_grpc(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS)
    async with running(Config(port=0, auth_token_file=tokens)) as (port, _):
        for case, authorization, expected in AUTH_CASES:
            headers = {"authorization": authorization} if authorization else {}
            async with ConnectClient(f"http://127.0.0.1:{port}", headers=headers) as client:
                request = task_req(aid(f"connect-{case}"))
                try:
                    await client.unary(SVC + "Enqueue", request, pb.EnqueueResponse)
                    got = None
                except RpcError as exc:
                    got = exc.code
            assert got == expected, ("connect", case)

            def grpc_call(authorization: str | None = authorization, case: str = case) -> Any:
                metadata = [("authorization", authorization)] if authorization else []
                with channel(port) as ch:
                    try:
                        ActionsServiceStub(ch).Enqueue(
                            task_req(aid(f"grpc-{case}")), metadata=metadata, timeout=5
                        )
                    except grpc.RpcError as exc:
                        return exc.code()
                    return None

            got_grpc = await in_thread(grpc_call)
            want = None if expected is None else getattr(grpc.StatusCode, expected.name)
            assert got_grpc == want, ("grpc", case)

        # Health, reflection and the plain HTTP routes need no token.
        assert await in_thread(lambda: grpc_health(port)) == health_pb2.HealthCheckResponse.SERVING

        def reflect() -> list[str]:
            with channel(port) as ch:
                return list(ProtoReflectionDescriptorDatabase(ch).get_services())

        assert SERVICE_NAME in await in_thread(reflect)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await http.get(path)).status_code == 200, path


# --------------------------------------------------------------------------- limits


async def test_watch_subscription_cap_is_resource_exhausted() -> None:
    config = Config(port=0, max_watch_subscriptions=2)
    async with (
        running(config) as (port, application),
        ConnectClient(f"http://127.0.0.1:{port}") as client,
    ):
        await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        request = pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))

        async def open_watch() -> AsyncIterator[pb.WatchForUpdatesResponse]:
            stream = client.server_stream(
                SVC + "WatchForUpdates", request, pb.WatchForUpdatesResponse
            )
            with trio.fail_after(5):
                while not (await stream.__anext__()).HasField("control_message"):
                    pass
            return stream

        first, second = await open_watch(), await open_watch()
        with pytest.raises(RpcError) as info:
            await open_watch()
        assert info.value.code == Code.RESOURCE_EXHAUSTED

        def grpc_watch() -> grpc.StatusCode:
            with channel(port) as ch:
                stream = ActionsServiceStub(ch).WatchForUpdates(request, timeout=5)
                try:
                    next(stream)
                except grpc.RpcError as exc:
                    return exc.code()
                stream.cancel()
                raise AssertionError("watch over the cap was accepted")

        assert await in_thread(grpc_watch) == grpc.StatusCode.RESOURCE_EXHAUSTED
        await first.aclose()
        # The slot is released when the stream ends.
        with trio.fail_after(5):
            while application.fanout.subscriber_count() > 1:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.02)
        third = await open_watch()
        await second.aclose()
        await third.aclose()


# --------------------------------------------------------------------------- logs, shutdown


async def test_request_id_is_echoed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="connect_proto.access")  # ok calls: DEBUG
    async with (
        running() as (port, _),
        ConnectClient(f"http://127.0.0.1:{port}") as client,
    ):
        result = await client.unary_call(
            SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse,
            headers={"x-request-id": "req-42"},
        )  # fmt: skip
        assert result.headers.get("x-request-id") == "req-42"
        generated = await client.unary_call(
            SVC + "Enqueue", task_req(aid("a1")), pb.EnqueueResponse
        )
        assert len(generated.headers.get("x-request-id") or "") == 32
    records = [r for r in caplog.records if r.name == "connect_proto.access"]
    assert any(getattr(r, "request_id", None) == "req-42" for r in records)
    assert all(getattr(r, "method", "").startswith(SVC) for r in records)


async def test_begin_shutdown_ends_watches_with_unavailable_and_unreadies() -> None:
    async with (
        running() as (port, application),
        ConnectClient(f"http://127.0.0.1:{port}") as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        stream = client.server_stream(
            SVC + "WatchForUpdates",
            pb.WatchForUpdatesRequest(parent_action_id=aid("a0")),
            pb.WatchForUpdatesResponse,
        )
        with trio.fail_after(5):
            while not (await stream.__anext__()).HasField("control_message"):
                pass
        application.begin_shutdown()
        with trio.fail_after(3), pytest.raises(RpcError) as info:
            await stream.__anext__()
        assert info.value.code == Code.UNAVAILABLE
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.text) == (503, "not ready: watch, accepting\n")
        assert application.health.get("") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(RpcError) as refused:
            await client.unary(SVC + "Enqueue", task_req(aid("a1")), pb.EnqueueResponse)
        assert refused.value.code == Code.UNAVAILABLE
