"""ConnectClient against scripted responses (httpx.MockTransport): how it reads the wire."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import httpx
import pytest
from testsvc.v1 import test_pb2

from connect_proto import Code, RpcError
from connect_proto._client import ConnectClient
from connect_proto._wire.envelope import encode_envelope

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **kwargs: object) -> ConnectClient:
    return ConnectClient("http://test", transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


async def collect(c: ConnectClient) -> list[int]:
    return [
        m.number
        async for m in c.server_stream(
            "/testsvc.v1.TestService/Count", test_pb2.CountRequest(), test_pb2.CountResponse
        )
    ]


def raw_response(status: int, headers: object, body: bytes) -> httpx.Response:
    # A stream, not content=: the client reads raw bytes, as from a real connection.
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))  # type: ignore[arg-type]


def stream_response(body: bytes, **headers: str) -> httpx.Response:
    return raw_response(200, {"content-type": "application/connect+proto", **headers}, body)


async def test_unary_request_shape_and_trailer_prefix_stripped() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return raw_response(
            200,
            [
                ("content-type", "application/json"),
                ("x-h", "1"),
                ("trailer-x-t", "a"),
                ("trailer-x-t", "b"),
            ],
            b'{"greeting":"hi"}',
        )

    async with client(handler, codec="json") as c:
        result = await c.unary_call(
            "/testsvc.v1.TestService/Get",
            test_pb2.GetRequest(name="n"),
            test_pb2.GetResponse,
            timeout_ms=1500,
        )
    assert result.message.greeting == "hi"
    assert result.headers.get("x-h") == "1"
    assert result.trailers.get_all("x-t") == ["a", "b"]
    request = seen[0]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["connect-protocol-version"] == "1"
    assert request.headers["connect-timeout-ms"] == "1500"
    assert json.loads(request.content) == {"name": "n"}


async def test_unary_gzip_request_and_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-encoding"] == "gzip"
        name = test_pb2.GetRequest.FromString(gzip.decompress(request.content)).name
        body = gzip.compress(test_pb2.GetResponse(greeting=name).SerializeToString())
        return raw_response(
            200, {"content-type": "application/proto", "content-encoding": "gzip"}, body
        )

    async with client(handler, compression="gzip") as c:
        response = await c.unary(
            "/testsvc.v1.TestService/Get", test_pb2.GetRequest(name="zz"), test_pb2.GetResponse
        )
    assert response.greeting == "zz"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "code", "message"),
    [
        (404, "application/json", b'{"code":"not_found","message":"m"}', Code.NOT_FOUND, "m"),
        (503, "text/plain", b"overloaded", Code.UNAVAILABLE, None),
        (400, "application/json", b"not json", Code.INTERNAL, None),
        (500, "application/json", b'{"code":null}', Code.UNKNOWN, None),
        (429, "application/json", b'{"code":"bogus"}', Code.UNKNOWN, ""),
    ],
)
async def test_unary_errors(
    status: int, content_type: str, body: bytes, code: Code, message: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return raw_response(status, {"content-type": content_type}, body)

    async with client(handler) as c:
        with pytest.raises(RpcError) as info:
            await c.unary("/x.Y/Z", test_pb2.GetRequest(), test_pb2.GetResponse)
    assert info.value.code is code
    if message is not None:
        assert info.value.message == message


async def test_stream_reads_messages_and_end() -> None:
    body = (
        encode_envelope(test_pb2.CountResponse(number=1).SerializeToString())
        + encode_envelope(gzip.compress(test_pb2.CountResponse(number=2).SerializeToString()), 1)
        + encode_envelope(b'{"metadata":{"x":["y"]}}', 2)
    )

    async with client(lambda r: stream_response(body, **{"connect-content-encoding": "gzip"})) as c:
        assert await collect(c) == [1, 2]


async def test_stream_error_in_end_stream() -> None:
    body = encode_envelope(b"\x08\x01") + encode_envelope(
        b'{"error":{"code":"unavailable","message":"overloaded"}}', 2
    )
    async with client(lambda r: stream_response(body)) as c:
        with pytest.raises(RpcError) as info:
            await collect(c)
    assert (info.value.code, info.value.message) == (Code.UNAVAILABLE, "overloaded")


@pytest.mark.parametrize(
    "body",
    [
        encode_envelope(b"\x08\x01"),  # no end-stream at all
        encode_envelope(b"{}", 2) + encode_envelope(b"\x08\x01"),  # data after the end
        encode_envelope(b"not json", 2),
        encode_envelope(b"\x08\x01")[:-1],  # truncated envelope
    ],
)
async def test_stream_protocol_violations_raise(body: bytes) -> None:
    async with client(lambda r: stream_response(body)) as c:
        with pytest.raises(RpcError):
            await collect(c)


async def test_stream_non_200_infers_code_from_status() -> None:
    async with client(lambda r: raw_response(415, {}, b"")) as c:
        with pytest.raises(RpcError) as info:
            await collect(c)
    assert info.value.code is Code.UNKNOWN
