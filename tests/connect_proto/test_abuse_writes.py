"""Every response write has an end (runner): a client that stops reading, or leaves
while a write waits, costs the server a bounded time, never a call held for good.

The server is ``ConnectApp`` under hypercorn in this test's trio loop (so the test can
read its counters directly); the client is a raw ``h2`` connection in a worker thread
that advertises a flow-control window of 0, so no response DATA can reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from grpc_health.v1 import health_pb2
from raw_h2 import CONNECT_PROTO, RawH2
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._extras.health import HEALTH_SERVICE, HealthService, HealthStatus
from connect_proto._server.serve import make_config, serve

COUNT = "/testsvc.v1.TestService/Count"
ECHO = "/testsvc.v1.TestService/Echo"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


@asynccontextmanager
async def served(app: ConnectApp) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, app, make_config("127.0.0.1", 0, graceful_timeout=1))
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def until(probe: Callable[[], bool], seconds: float = 10) -> bool:
    with trio.move_on_after(seconds):
        while not probe():  # noqa: ASYNC110 (counters, not events)
            await trio.sleep(0.05)
    return probe()


def _app(**options: Any) -> tuple[ConnectApp, TestServiceImpl, HealthService]:
    impl = TestServiceImpl()
    health = HealthService(HealthStatus(), max_watchers=options.pop("max_watchers", 1000))
    app = ConnectApp([(TEST_SERVICE, impl), (HEALTH_SERVICE, health)], **options)
    return app, impl, health


async def test_unary_answers_to_a_client_that_left_are_abandoned_at_once() -> None:
    app, _, _ = _app()  # the write timeout (30 s) plays no part here
    async with served(app) as port:

        def stall_then_leave() -> None:
            client = RawH2(port, window=0)
            for _ in range(50):
                client.call(ECHO, test_pb2.EchoRequest(message="x" * 100).SerializeToString(),
                            content_type=CONNECT_PROTO)  # fmt: skip
            client.flush()
            client.responses(0.5)
            client.close()

        await in_thread(stall_then_leave)
        assert await until(lambda: app.open_calls == 0, 5), app.open_calls


async def test_a_stream_whose_client_reads_nothing_ends_after_the_write_timeout() -> None:
    app, impl, _ = _app(write_timeout=0.5, max_streams=10)
    async with served(app) as port:
        client = await in_thread(lambda: RawH2(port, window=0))
        try:
            # More than one flow-control window's worth, none of it deliverable.
            request = test_pb2.CountRequest(count=20_000).SerializeToString()
            await in_thread(lambda: (client.call(COUNT, request), client.flush()))
            assert await until(lambda: impl.started == ["count"])
            assert app.open_streams == 1
            assert await until(lambda: app.open_calls == 0, 5)
            assert app.open_streams == 0  # the slot is free again
        finally:
            client.close()


async def test_health_watches_are_bounded() -> None:
    app, _, health = _app(max_watchers=2)
    request = health_pb2.HealthCheckRequest().SerializeToString()
    async with served(app) as port:

        def watch_three() -> list[bytes | None]:
            client = RawH2(port)
            ids = [client.call(HEALTH_WATCH, request) for _ in range(3)]
            client.flush()
            seen = client.responses(1)
            client.close()
            return [seen[sid].get(b"grpc-status") for sid in ids]

        # Streams opened at once may be started in any order: one of the three is refused.
        statuses = await in_thread(watch_three)
        assert sorted(statuses, key=lambda s: s or b"") == [None, None, b"8"]  # RESOURCE_EXHAUSTED
        assert await until(lambda: health.watchers == 0)
