"""Health (connect_proto._extras.health): grpc.health.v1 over h2c with grpcio, /healthz and /readyz
with curl, and the registry itself.

The server runs in this process so tests can change statuses while clients watch;
blocking clients run in threads or subprocesses.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import require_curl
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._client import ConnectClient
from connect_proto._errors import Code, RpcError
from connect_proto._extras.health import (
    HEALTH_SERVICE,
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    HealthService,
    HealthStatus,
    Readiness,
    healthz_app,
)
from connect_proto._server.serve import make_config, serve

CHECK = "/grpc.health.v1.Health/Check"


@asynccontextmanager
async def running_server(health: HealthStatus, readiness: Readiness) -> AsyncIterator[int]:
    app = ConnectApp(
        [(TEST_SERVICE, TestServiceImpl()), (HEALTH_SERVICE, HealthService(health))],
        http_routes={"/healthz": healthz_app, "/readyz": readiness.app},
    )
    config = make_config("127.0.0.1", 0, graceful_timeout=0.5)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(serve, app, config)
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- registry


def test_registry_set_get_and_shutdown() -> None:
    health = HealthStatus()
    assert health.get("") == SERVING and health.is_serving()
    health.set("a.B", NOT_SERVING)
    assert health.current("a.B") == NOT_SERVING and not health.is_serving("a.B")
    assert health.current("x.Y") == SERVICE_UNKNOWN and health.get("x.Y") is None
    with pytest.raises(ValueError):
        health.set("a.B", SERVICE_UNKNOWN)
    health.clear("a.B")
    assert health.get("a.B") is None
    health.set("a.B", SERVING)
    health.enter_graceful_shutdown()
    assert health.snapshot() == {"": NOT_SERVING, "a.B": NOT_SERVING}
    health.set("a.B", SERVING)  # ignored once shutting down
    assert health.get("a.B") == NOT_SERVING


# --------------------------------------------------------------------------- gRPC


def _check(port: int, service: str) -> tuple[int | None, grpc.StatusCode]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            return None, exc.code()
        return reply.status, grpc.StatusCode.OK


async def test_check_over_grpc_and_connect() -> None:
    health = HealthStatus()
    health.set("testsvc.v1.TestService", NOT_SERVING)
    async with running_server(health, Readiness()) as port:
        assert await trio.to_thread.run_sync(_check, port, "") == (SERVING, grpc.StatusCode.OK)
        assert await trio.to_thread.run_sync(_check, port, "testsvc.v1.TestService") == (
            NOT_SERVING,
            grpc.StatusCode.OK,
        )
        assert await trio.to_thread.run_sync(_check, port, "no.Such") == (
            None,
            grpc.StatusCode.NOT_FOUND,
        )
        # Same service through the Connect protocol.
        async with ConnectClient(f"http://127.0.0.1:{port}") as client:
            reply = await client.unary(
                CHECK, health_pb2.HealthCheckRequest(), health_pb2.HealthCheckResponse
            )
            assert reply.status == SERVING
            with pytest.raises(RpcError) as info:
                await client.unary(
                    CHECK,
                    health_pb2.HealthCheckRequest(service="no.Such"),
                    health_pb2.HealthCheckResponse,
                )
            assert info.value.code is Code.NOT_FOUND


def _list(port: int) -> dict[str, int]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
        return {name: response.status for name, response in reply.statuses.items()}


@pytest.mark.skipif(
    "List" not in HEALTH_SERVICE.methods_by_name, reason="grpcio-health-checking without List"
)
async def test_list_over_grpc() -> None:
    health = HealthStatus()
    health.set("a.B", NOT_SERVING)
    async with running_server(health, Readiness()) as port:
        assert await trio.to_thread.run_sync(_list, port) == {"": SERVING, "a.B": NOT_SERVING}
        for number in range(100):
            health.set(f"s{number}", SERVING)
        with pytest.raises(grpc.RpcError) as info:
            await trio.to_thread.run_sync(_list, port)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


class _Watcher:
    """A grpcio Watch in a thread; statuses arrive on a queue until ``cancel``."""

    def __init__(self, port: int, service: str) -> None:
        self.statuses: queue.Queue[Any] = queue.Queue()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for reply in self._call:
                self.statuses.put(reply.status)
        except grpc.RpcError as exc:
            self.statuses.put(exc.code())

    async def next(self) -> Any:
        return await trio.to_thread.run_sync(lambda: self.statuses.get(timeout=5))

    def cancel(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


async def test_watch_sees_current_status_then_each_change() -> None:
    health = HealthStatus()
    health.set("testsvc.v1.TestService", SERVING)
    async with running_server(health, Readiness()) as port:
        watcher = _Watcher(port, "testsvc.v1.TestService")
        try:
            assert await watcher.next() == SERVING
            health.set("testsvc.v1.TestService", NOT_SERVING)
            assert await watcher.next() == NOT_SERVING
            health.set("testsvc.v1.TestService", NOT_SERVING)  # no change, nothing sent
            health.set("testsvc.v1.TestService", SERVING)
            assert await watcher.next() == SERVING
            health.clear("testsvc.v1.TestService")
            assert await watcher.next() == SERVICE_UNKNOWN
        finally:
            watcher.cancel()
        assert watcher.statuses.get(timeout=5) == grpc.StatusCode.CANCELLED


async def test_watch_unknown_service_keeps_watching_until_registered() -> None:
    health = HealthStatus()
    async with running_server(health, Readiness()) as port:
        watcher = _Watcher(port, "later.Service")
        try:
            assert await watcher.next() == SERVICE_UNKNOWN
            health.set("later.Service", SERVING)
            assert await watcher.next() == SERVING
        finally:
            watcher.cancel()


async def test_graceful_shutdown_tells_watchers_then_ends_their_streams() -> None:
    health = HealthStatus()
    async with running_server(health, Readiness()) as port:
        watcher = _Watcher(port, "")
        try:
            assert await watcher.next() == SERVING
            health.enter_graceful_shutdown()
            assert await watcher.next() == NOT_SERVING
            assert await watcher.next() == grpc.StatusCode.UNAVAILABLE
        finally:
            watcher.cancel()
        # A watch started now learns the state and ends at once, too.
        late = _Watcher(port, "")
        try:
            assert await late.next() == NOT_SERVING
            assert await late.next() == grpc.StatusCode.UNAVAILABLE
        finally:
            late.cancel()


async def test_watch_ends_when_client_leaves() -> None:
    """After the client cancels, the handler is gone: the status object has no waiters
    left and the server still answers (and stops promptly at the end)."""
    health = HealthStatus()
    async with running_server(health, Readiness()) as port:
        watcher = _Watcher(port, "")
        assert await watcher.next() == SERVING
        watcher.cancel()
        # Polls state the server owns; there is no event to wait on for "handler gone".
        with trio.fail_after(5):
            while health.changed_event().statistics().tasks_waiting:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert await trio.to_thread.run_sync(_check, port, "") == (SERVING, grpc.StatusCode.OK)


# --------------------------------------------------------------------------- HTTP probes


async def _curl(port: int, path: str, *extra: str) -> tuple[int, str]:
    curl = require_curl()
    result = await trio.run_process(
        [curl, "-sS", *extra, "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
        capture_stdout=True,
        check=True,
    )
    body, _, status = result.stdout.decode().rpartition("\n")
    return int(status), body


async def test_healthz_and_readyz_with_curl() -> None:
    store_ok = True

    async def watch_synced() -> bool:
        await trio.lowlevel.checkpoint()
        return True

    def broken() -> bool:
        raise RuntimeError("boom")

    readiness = Readiness({"store": lambda: store_ok, "watch": watch_synced})
    async with running_server(HealthStatus(), readiness) as port:
        assert await _curl(port, "/healthz") == (200, "ok\n")
        assert await _curl(port, "/readyz") == (200, "ok\n")
        assert await _curl(port, "/readyz", "--http2-prior-knowledge") == (200, "ok\n")
        store_ok = False
        assert await _curl(port, "/readyz") == (503, "not ready: store\n")
        readiness.add("broken", broken)
        assert await _curl(port, "/readyz") == (503, "not ready: store, broken\n")
        assert await _curl(port, "/readyz?verbose") == (
            503,
            "[-]store failed\n[+]watch ok\n[-]broken failed\nnot ready\n",
        )
        readiness.remove("broken")
        store_ok = True
        assert await _curl(port, "/readyz?verbose") == (200, "[+]store ok\n[+]watch ok\nok\n")
        assert await _curl(port, "/readyz") == (200, "ok\n")
        assert (await _curl(port, "/healthz", "-X", "POST"))[0] == 405


async def test_readiness_check_timeout_counts_as_failing() -> None:
    async def hangs() -> bool:
        await trio.sleep_forever()
        return True  # pragma: no cover

    health = HealthStatus()
    readiness = Readiness({"grpc": health.is_serving, "slow": hangs}, check_timeout=0.05)
    assert await readiness.failing() == ["slow"]
    health.enter_graceful_shutdown()
    assert await readiness.failing() == ["grpc", "slow"]
