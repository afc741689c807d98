"""Graceful shutdown: open streams end with UNAVAILABLE, new calls are refused, unary
calls in flight finish. In-process per protocol, then over real sockets."""

from __future__ import annotations

import grpc
import h2.errors
import h2.events
import h11
import httpx
import pytest
import trio
from h2_peer import OURS, Peer, Server, grpc_headers, make_app, of_type, stock_and_ours
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
        with trio.fail_after(5):  # a loaded machine may start the handler late
            while not impl.started:  # noqa: ASYNC110 - polls the handler's record
                await trio.sleep(0.01)
        await trio.sleep(0.1)  # a few of its messages (one each 20 ms) are out
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


# Over sockets, against stock hypercorn too ------------------------------------------------------

SLEEP = f"{SVC}/Sleep"
ECHO = f"{SVC}/Echo"


@stock_and_ours(
    "hypercorn issue 6: during shutdown a new stream's HEADERS and RST_STREAM in one read "
    "make it reset a closed stream; h2's StreamClosedError ends the server"
)
async def test_stream_opened_and_reset_during_shutdown(server_kind: str) -> None:
    """The call in flight finishes within the grace period; the server stops cleanly."""
    async with trio.open_nursery() as nursery:
        server = Server(server_kind, make_app(), make_config("127.0.0.1", 0, graceful_timeout=5))
        await server.start(nursery)
        peer = await Peer.connect(server.port)
        peer.h2.send_headers(1, grpc_headers(SLEEP))
        body = encode_envelope(test_pb2.SleepRequest(ms=400).SerializeToString())
        peer.h2.send_data(1, body, end_stream=True)
        await peer.flush()
        await trio.sleep(0.1)
        server.begin_shutdown()
        await trio.sleep(0.05)
        peer.h2.send_headers(3, grpc_headers(ECHO))
        peer.h2.reset_stream(3, h2.errors.ErrorCodes.CANCEL)
        await peer.flush()  # one write: the server reads both frames at once
        events = await peer.until(lambda seen: of_type(seen, h2.events.StreamEnded))
        trailers = [e for e in of_type(events, h2.events.TrailersReceived) if e.stream_id == 1]
        await peer.aclose()
        with trio.fail_after(8):
            await server.done.wait()
    assert server.error is None
    assert trailers and (b"grpc-status", b"0") in trailers[0].headers


def _http1_request(path: str, body: bytes) -> bytes:
    client = h11.Connection(h11.CLIENT)
    headers = [
        ("host", "127.0.0.1"),
        ("content-type", "application/proto"),
        ("content-length", str(len(body))),
    ]
    return b"".join(
        (
            client.send(h11.Request(method="POST", target=path, headers=headers)) or b"",
            client.send(h11.Data(data=body)) or b"",
            client.send(h11.EndOfMessage()) or b"",
        )
    )


async def _http1_responses(stream: trio.SocketStream, count: int) -> list[h11.Response]:
    """Up to ``count`` responses read from ``stream`` until the server closes it."""
    client = h11.Connection(h11.CLIENT)
    responses: list[h11.Response] = []
    client.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    while len(responses) < count:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            break  # closed in the middle of a response, or before one
        if event is h11.NEED_DATA:
            try:
                client.receive_data(await stream.receive_some(65536))
            except trio.BrokenResourceError:
                client.receive_data(b"")
        elif isinstance(event, h11.Response):
            responses.append(event)
        elif isinstance(event, h11.EndOfMessage) and len(responses) < count:
            if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                break
            client.start_next_cycle()
            client.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
            client.send(h11.EndOfMessage())
        elif isinstance(event, h11.ConnectionClosed):
            break
    return responses


@stock_and_ours(
    "hypercorn issue 7: on shutdown an HTTP/1.1 keep-alive connection whose next request "
    "had arrived waits for can_read until the grace period ends, and that request is "
    "dropped without an answer"
)
async def test_http1_keep_alive_request_that_arrived_as_shutdown_began(server_kind: str) -> None:
    """Two pipelined requests: a slow one in flight when shutdown begins, and the next,
    already read. The first gets its answer, the second UNAVAILABLE (HTTP 503) with
    ``connection: close``; the server stops long before the grace period ends."""
    async with trio.open_nursery() as nursery:
        server = Server(server_kind, make_app(), make_config("127.0.0.1", 0, graceful_timeout=6))
        await server.start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        slow = test_pb2.SleepRequest(ms=300).SerializeToString()
        echo = test_pb2.EchoRequest(message="late").SerializeToString()
        await stream.send_all(_http1_request(SLEEP, slow) + _http1_request(ECHO, echo))
        await trio.sleep(0.1)
        server.begin_shutdown()
        began = trio.current_time()
        with trio.move_on_after(8):
            responses = await _http1_responses(stream, 2)
        await stream.aclose()
        with trio.fail_after(8):
            await server.done.wait()
        stopped_after = trio.current_time() - began
    assert server.error is None
    assert [r.status_code for r in responses] == [200, 503]
    assert (b"connection", b"close") in responses[-1].headers
    assert stopped_after < 3, stopped_after  # not the 6 s grace period


async def test_idle_http1_keep_alive_connection_closes_at_once_on_shutdown() -> None:
    async with trio.open_nursery() as nursery:
        server = Server(OURS, make_app(), make_config("127.0.0.1", 0, graceful_timeout=6))
        await server.start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        echo = test_pb2.EchoRequest(message="x").SerializeToString()
        await stream.send_all(_http1_request(ECHO, echo))
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
        server.begin_shutdown()
        began = trio.current_time()
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""  # closed, nothing sent
            await server.done.wait()
        stopped_after = trio.current_time() - began
        await stream.aclose()
    assert server.error is None
    assert stopped_after < 1, stopped_after


async def test_idle_http2_connection_gets_goaway_and_closes_on_shutdown() -> None:
    async with trio.open_nursery() as nursery:
        server = Server(OURS, make_app(), make_config("127.0.0.1", 0, graceful_timeout=6))
        await server.start(nursery)
        peer = await Peer.connect(server.port)
        peer.h2.send_headers(1, grpc_headers(ECHO))
        peer.h2.send_data(1, encode_envelope(b""), end_stream=True)
        await peer.flush()
        await peer.until(lambda seen: of_type(seen, h2.events.StreamEnded))
        server.begin_shutdown()
        with trio.fail_after(3):
            events = await peer.until(lambda seen: False)  # until the server closes it
            await server.done.wait()
        await peer.aclose()
    goaways = of_type(events, h2.events.ConnectionTerminated)
    assert [(g.error_code, g.last_stream_id) for g in goaways] == [
        (h2.errors.ErrorCodes.NO_ERROR, 1)
    ]
    assert server.error is None
