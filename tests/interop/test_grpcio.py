"""Interop: the PyPI ``grpcio`` client (the C-core gRPC stack) against our layer.

grpcio speaks only gRPC over HTTP/2: h2c with prior knowledge on the plain port and h2
through ALPN on the TLS port. No generated stubs: the channel's generic
``unary_unary``/``unary_stream``/``stream_unary`` callables with the protobuf
(de)serialisers are exactly what generated code does.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2
from grpc_status import rpc_status
from servers import RunningServer
from testsvc.v1 import test_pb2

SERVICE = "/testsvc.v1.TestService"
OPTIONS = [("grpc.enable_http_proxy", 0)]


def _open(server: RunningServer, compression: grpc.Compression | None) -> grpc.Channel:
    if server.tls is None:
        return grpc.insecure_channel(server.target, options=OPTIONS, compression=compression)
    credentials = grpc.ssl_channel_credentials(root_certificates=server.tls.ca_pem.read_bytes())
    return grpc.secure_channel(server.target, credentials, options=OPTIONS, compression=compression)


@pytest.fixture(params=["plain", "tls"])
def server(request: pytest.FixtureRequest) -> RunningServer:
    return request.getfixturevalue("tls_server" if request.param == "tls" else "plain_server")


@pytest.fixture(params=["identity", "gzip"])
def channel(server: RunningServer, request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    compression = grpc.Compression.Gzip if request.param == "gzip" else None
    with _open(server, compression) as ch:
        yield ch


def _echo(ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(
        f"{SERVICE}/Echo",
        request_serializer=test_pb2.EchoRequest.SerializeToString,
        response_deserializer=test_pb2.EchoResponse.FromString,
    )


def _count(ch: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    return ch.unary_stream(
        f"{SERVICE}/Count",
        request_serializer=test_pb2.CountRequest.SerializeToString,
        response_deserializer=test_pb2.CountResponse.FromString,
    )


def _fail(ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(
        f"{SERVICE}/Fail",
        request_serializer=test_pb2.FailRequest.SerializeToString,
        response_deserializer=test_pb2.FailResponse.FromString,
    )


def _headers(response: test_pb2.EchoResponse) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for h in response.request_headers:
        seen.setdefault(h.name, []).append(h.value)
    return seen


def _metadata(pairs: object) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for key, value in pairs or ():  # type: ignore[attr-defined]
        out.setdefault(key, []).append(value)
    return out


def test_unary_metadata_both_ways(channel: grpc.Channel) -> None:
    payload = bytes(range(256)) * 8
    request = test_pb2.EchoRequest(
        message="hi ☺",
        payload=payload,
        response_headers=[
            test_pb2.Header(name="x-resp", value="one"),
            test_pb2.Header(name="x-resp", value="two"),
            test_pb2.Header(name="x-resp-bin", value="AAEC"),
        ],
        response_trailers=[test_pb2.Header(name="x-trail", value="done")],
    )
    response, call = _echo(channel).with_call(
        request,
        metadata=[("x-custom", "v1"), ("x-custom", "v2"), ("x-raw-bin", b"\x00\xff\x10")],
        timeout=10,
    )
    assert response.message == "hi ☺"
    assert response.payload == payload
    assert response.protocol == "grpc"
    seen = _headers(response)
    assert seen["x-custom"] in (["v1", "v2"], ["v1, v2"])
    assert base64.b64decode(seen["x-raw-bin"][0] + "==") == b"\x00\xff\x10"
    assert seen["content-type"][0].startswith("application/grpc")
    assert seen["te"] == ["trailers"]
    initial = _metadata(call.initial_metadata())
    assert initial["x-resp"] == ["one", "two"]
    assert initial["x-resp-bin"] == [b"\x00\x01\x02"]
    assert _metadata(call.trailing_metadata())["x-trail"] == ["done"]
    assert call.code() == grpc.StatusCode.OK


def test_gzip_request_compression(server: RunningServer) -> None:
    with _open(server, grpc.Compression.Gzip) as ch:
        response = _echo(ch)(test_pb2.EchoRequest(message="z" * 4096), timeout=10)
    assert response.message == "z" * 4096
    assert _headers(response)["grpc-encoding"] == ["gzip"]


def test_server_stream(channel: grpc.Channel) -> None:
    call = _count(channel)(
        test_pb2.CountRequest(
            count=4, response_trailers=[test_pb2.Header(name="x-end", value="yes")]
        ),
        timeout=10,
    )
    assert [m.number for m in call] == [1, 2, 3, 4]
    assert call.code() == grpc.StatusCode.OK
    assert _metadata(call.trailing_metadata())["x-end"] == ["yes"]


def test_server_stream_error_after_messages(channel: grpc.Channel) -> None:
    call = _count(channel)(
        test_pb2.CountRequest(count=3, fail_code=14, fail_message="try later"), timeout=10
    )
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for message in call:
            received.append(message.number)
    assert received == [1, 2, 3]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert info.value.details() == "try later"  # type: ignore[attr-defined]


def test_error_details_and_metadata(channel: grpc.Channel) -> None:
    detail = any_pb2.Any()
    detail.Pack(test_pb2.Header(name="why", value="because"))
    message = "\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\n"
    request = test_pb2.FailRequest(
        code=9,
        message=message,
        details=[detail],
        response_headers=[test_pb2.Header(name="x-h", value="1")],
        response_trailers=[test_pb2.Header(name="x-t", value="2")],
    )
    with pytest.raises(grpc.RpcError) as info:
        _fail(channel)(request, timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert err.details() == message  # percent-encoded on the wire, decoded by grpcio
    assert _metadata(err.initial_metadata())["x-h"] == ["1"]  # type: ignore[attr-defined]
    assert _metadata(err.trailing_metadata())["x-t"] == ["2"]  # type: ignore[attr-defined]
    status = rpc_status.from_call(err)  # parses grpc-status-details-bin, checks agreement
    assert status is not None
    assert status.code == 9
    assert status.message == message
    assert len(status.details) == 1
    unpacked = test_pb2.Header()
    assert status.details[0].Unpack(unpacked)
    assert (unpacked.name, unpacked.value) == ("why", "because")


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_status_code(plain_server: RunningServer, code: grpc.StatusCode) -> None:
    with _open(plain_server, None) as ch, pytest.raises(grpc.RpcError) as info:
        _fail(ch)(test_pb2.FailRequest(code=code.value[0], message=code.name), timeout=10)
    assert info.value.code() == code  # type: ignore[attr-defined]
    assert info.value.details() == code.name  # type: ignore[attr-defined]


def test_deadline_propagates(channel: grpc.Channel) -> None:
    response = _echo(channel)(test_pb2.EchoRequest(), timeout=3)
    sent = _headers(response)["grpc-timeout"][0]
    # grpc-core rounds the grpc-timeout it sends up to a compact encoding (e.g. a 3 s
    # deadline can go out as "3010m" or "3S"), so the server may see slightly more.
    assert 2.0 < response.timeout_seconds <= 3.1, sent


def test_deadline_exceeded(channel: grpc.Channel) -> None:
    sleep = channel.unary_unary(
        f"{SERVICE}/Sleep",
        request_serializer=test_pb2.SleepRequest.SerializeToString,
        response_deserializer=test_pb2.SleepResponse.FromString,
    )
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        sleep(test_pb2.SleepRequest(ms=3000), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert time.monotonic() - start < 2.0


def test_client_stream(channel: grpc.Channel) -> None:
    total = channel.stream_unary(
        f"{SERVICE}/Sum",
        request_serializer=test_pb2.SumRequest.SerializeToString,
        response_deserializer=test_pb2.SumResponse.FromString,
    )
    response = total(iter([test_pb2.SumRequest(value=v) for v in (1, 2, 39)]), timeout=10)
    assert (response.total, response.count) == (42, 3)


def test_bidi_stream(channel: grpc.Channel) -> None:
    chat = channel.stream_stream(
        f"{SERVICE}/Chat",
        request_serializer=test_pb2.ChatRequest.SerializeToString,
        response_deserializer=test_pb2.ChatResponse.FromString,
    )
    replies = [r.text for r in chat(iter([test_pb2.ChatRequest(text=t) for t in "abc"]))]
    assert replies == ["echo: a", "echo: b", "echo: c"]


def test_unknown_method_is_unimplemented(plain_server: RunningServer) -> None:
    with _open(plain_server, None) as ch:
        missing = ch.unary_unary(f"{SERVICE}/Nope")
        with pytest.raises(grpc.RpcError) as info:
            missing(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_large_message_flow_control(channel: grpc.Channel) -> None:
    """3 MiB each way: many DATA frames and HTTP/2 window updates in both directions."""
    payload = bytes(range(256)) * (3 * 1024 * 4)
    response = _echo(channel)(test_pb2.EchoRequest(payload=payload), timeout=30)
    assert response.payload == payload


def test_message_over_server_limit(plain_server: RunningServer) -> None:
    options = [*OPTIONS, ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(plain_server.target, options=options) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _echo(ch)(test_pb2.EchoRequest(payload=b"x" * (5 * 1024 * 1024)), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_many_concurrent_calls_on_one_connection(plain_server: RunningServer) -> None:
    with _open(plain_server, None) as ch:
        echo = _echo(ch)
        futures = [
            echo.future(test_pb2.EchoRequest(message=str(i)), timeout=30) for i in range(300)
        ]
        assert [f.result().message for f in futures] == [str(i) for i in range(300)]


def test_sustained_concurrency_on_one_connection(fresh_server: RunningServer) -> None:
    """1,500 calls with 64 always in flight on one channel, as a busy gRPC client does.

    hypercorn 0.18's trio worker leaks an HTTP/2 priority-tree entry per response that
    ends with ASGI trailers under this pattern; at 1,000 the connection fails with
    ``priority.TooManyStreamsError`` and the exception ends the whole server. The
    asyncio worker serves the same traffic (see the report in docs/benchmarks.md).
    """
    total, window = 1500, 64
    lock = threading.Lock()
    state: dict[str, object] = {"sent": 0, "done": 0, "error": None}
    finished = threading.Event()
    with _open(fresh_server, None) as ch:
        echo = _echo(ch)

        def submit() -> None:
            with lock:
                if state["sent"] >= total or state["error"] is not None:  # type: ignore[operator]
                    return
                state["sent"] = state["sent"] + 1  # type: ignore[operator]
            echo.future(test_pb2.EchoRequest(message="x"), timeout=20).add_done_callback(done)

        def done(future: grpc.Future) -> None:
            try:
                assert future.result().message == "x"
            except grpc.RpcError as err:
                state["error"] = f"{err.code()}: {err.details()}"  # type: ignore[attr-defined]
                finished.set()
                return
            with lock:
                state["done"] = state["done"] + 1  # type: ignore[operator]
                if state["done"] == total:
                    finished.set()
            submit()

        for _ in range(window):
            submit()
        assert finished.wait(60), state
    assert state["error"] is None, (state, fresh_server.log_text()[-3000:])
    assert state["done"] == total
    assert fresh_server.process.poll() is None
