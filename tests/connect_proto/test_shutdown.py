"""Graceful shutdown: open streams end with UNAVAILABLE, new calls are refused, unary
calls in flight finish. In-process per protocol, then over real sockets."""

from __future__ import annotations

import grpc
import httpx
import pytest
import trio
from proto_calls import ALL, CONNECT_STREAM, GRPC, GRPC_WEB, SVC, Case, call, request_for
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._app.shutdown import SHUTTING_DOWN_MESSAGE, ShutdownSignal
from connect_proto._client import ConnectClient
from connect_proto._errors import Code, RpcError
from connect_proto._server.serve import make_config, serve
from connect_proto._wire.envelope import EnvelopeDecoder, encode_envelope

SLOW_COUNT = test_pb2.CountRequest(count=1000, delay_ms=20)


# In-process ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [CONNECT_STREAM, GRPC, GRPC_WEB], ids=lambda c: c.name)
async def test_open_stream_ends_with_unavailable(case: Case) -> None:
    impl = TestServiceImpl()
    app = ConnectApp([(TEST_SERVICE, impl)])
    results = []

    async def stream() -> None:
        results.append(await call(app, case, f"{SVC}/Count", SLOW_COUNT))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream)
        await trio.sleep(0.1)
        app.begin_shutdown()
    ((status, response),) = results
    assert (status.code, status.message) == (Code.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)
    assert 0 < status.messages < 1000
    assert response.complete
    assert impl.cancelled == ["count"]


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_new_calls_after_shutdown_are_unavailable(case: Case) -> None:
    impl = TestServiceImpl()
    app = ConnectApp([(TEST_SERVICE, impl)])
    app.begin_shutdown()
    app.begin_shutdown()  # idempotent
    path, message = request_for(case)
    status, response = await call(app, case, path, message)
    assert status.code is Code.UNAVAILABLE
    assert impl.started == []
    if case.name == "connect-unary":
        assert response.status == 503


async def test_unary_in_flight_is_not_interrupted() -> None:
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    results = []

    async def slow() -> None:
        results.append(await call(app, GRPC, f"{SVC}/Sleep", test_pb2.SleepRequest(ms=200)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await trio.sleep(0.05)
        app.begin_shutdown()
    assert results[0][0].code is None


async def test_shutdown_signal_callbacks_and_late_registration() -> None:
    signal = ShutdownSignal()
    seen: list[str] = []
    signal.on_begin(lambda: seen.append("early"))
    signal.begin()
    signal.on_begin(lambda: seen.append("late"))
    assert seen == ["early", "late"] and signal.event.is_set()
    with signal.stream_scope() as scope:
        await trio.sleep(1)  # already cancelled: returns at once
    assert scope.cancelled_caught


# Over sockets ----------------------------------------------------------------------------------


def _grpc_stream(port: int) -> tuple[int, Code | None, str]:
    """Read a slow Count over grpcio until it ends; (messages, code, details)."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        count = channel.unary_stream(
            f"{SVC}/Count",
            request_serializer=test_pb2.CountRequest.SerializeToString,
            response_deserializer=test_pb2.CountResponse.FromString,
        )
        received = 0
        try:
            for _ in count(SLOW_COUNT, timeout=20):
                received += 1
        except grpc.RpcError as exc:
            return received, Code.from_grpc(exc.code().value[0]), exc.details()
        return received, None, ""


async def test_shutdown_over_sockets_ends_streams_and_lets_unary_finish() -> None:
    """One server; a Connect stream (h2c), a gRPC-Web stream (HTTP/1.1), a gRPC stream
    (grpcio) and a slow unary are open when the server is told to stop."""
    impl = TestServiceImpl()
    app = ConnectApp([(TEST_SERVICE, impl)])
    outcomes: dict[str, object] = {}

    async with trio.open_nursery() as clients:
        async with trio.open_nursery() as server_nursery:
            port = await server_nursery.start(
                serve, app, make_config("127.0.0.1", 0, graceful_timeout=5.0)
            )
            url = f"http://127.0.0.1:{port}"

            async def connect_stream() -> None:
                got = 0
                async with ConnectClient(url, http2=True) as client:
                    try:
                        async for _ in client.server_stream(
                            f"{SVC}/Count", SLOW_COUNT, test_pb2.CountResponse
                        ):
                            got += 1
                    except RpcError as exc:
                        outcomes["connect"] = (got, exc.code, exc.message)

            async def grpc_web_stream() -> None:
                async with httpx.AsyncClient() as raw:
                    response = await raw.post(
                        f"{url}{SVC}/Count",
                        content=encode_envelope(SLOW_COUNT.SerializeToString()),
                        headers={"content-type": "application/grpc-web+proto"},
                        timeout=20,
                    )
                frames = list(EnvelopeDecoder(1 << 20).feed(response.content))
                outcomes["grpc-web"] = (len(frames) - 1, frames[-1].flags, frames[-1].payload)

            async def grpc_stream() -> None:
                outcomes["grpc"] = await trio.to_thread.run_sync(_grpc_stream, port)

            async def slow_unary() -> None:
                async with ConnectClient(url) as client:
                    reply = await client.unary(
                        f"{SVC}/Sleep", test_pb2.SleepRequest(ms=700), test_pb2.SleepResponse
                    )
                outcomes["unary"] = reply

            for task in (connect_stream, grpc_web_stream, grpc_stream, slow_unary):
                clients.start_soon(task)
            for _ in range(500):  # until all four calls reached their handlers
                if impl.started.count("count") == 3 and "sleep" in impl.started:
                    break
                await trio.sleep(0.02)
            await trio.sleep(0.1)  # let every stream deliver some messages
            server_nursery.cancel_scope.cancel()  # as SIGTERM does in the service

    got, code, message = outcomes["connect"]  # type: ignore[misc]
    assert got > 0 and code is Code.UNAVAILABLE and message == SHUTTING_DOWN_MESSAGE
    data_frames, flags, trailer = outcomes["grpc-web"]  # type: ignore[misc]
    assert data_frames > 0 and flags == 0x80
    assert trailer.startswith(b"grpc-status: 14\r\n")
    got, code, message = outcomes["grpc"]  # type: ignore[misc]
    assert got > 0 and code is Code.UNAVAILABLE and message == SHUTTING_DOWN_MESSAGE
    assert isinstance(outcomes["unary"], test_pb2.SleepResponse)
    assert sorted(impl.cancelled) == ["count", "count", "count"]
