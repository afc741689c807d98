"""Interop: the PyPI ``connectrpc`` 0.13 client (pyqwest transport) against our layer.

Every protocol the client speaks, over every transport it supports (HTTP/1.1, h2c,
TLS with HTTP/1.1 or h2 through ALPN), with identity and gzip request compression.
The tests are plain synchronous functions: the client is blocking and the server runs
in its own process (tests/support/servers.py), so no event loop is involved here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from connectrpc.client import ResponseMetadata
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.protobuf import any_pb2
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport
from servers import RunningServer, TlsFiles, run_server
from testsvc.v1 import test_pb2


@dataclass(frozen=True)
class Variant:
    protocol: ProtocolType
    json: bool
    http: HTTPVersion
    tls: bool

    @property
    def server_protocol(self) -> str:
        """What the handler reports in EchoResponse.protocol."""
        return {
            ProtocolType.CONNECT: "connect",
            ProtocolType.GRPC: "grpc",
            ProtocolType.GRPC_WEB: "grpc-web",
        }[self.protocol]

    @property
    def id(self) -> str:
        proto = {
            ProtocolType.CONNECT: "connect",
            ProtocolType.GRPC: "grpc",
            ProtocolType.GRPC_WEB: "grpcweb",
        }[self.protocol]
        codec = "json" if self.json else "proto"
        http = "h2" if self.http == HTTPVersion.HTTP2 else "h1"
        return f"{proto}-{codec}-{'tls' if self.tls else 'plain'}-{http}"


H1, H2 = HTTPVersion.HTTP1, HTTPVersion.HTTP2
CONNECT, GRPC, GRPC_WEB = ProtocolType.CONNECT, ProtocolType.GRPC, ProtocolType.GRPC_WEB

VARIANTS = [
    Variant(CONNECT, False, H1, False),
    Variant(CONNECT, False, H2, False),
    Variant(CONNECT, True, H1, False),
    Variant(CONNECT, True, H2, False),
    Variant(GRPC, False, H2, False),
    Variant(GRPC_WEB, False, H1, False),
    Variant(GRPC_WEB, False, H2, False),
    Variant(CONNECT, False, H1, True),
    Variant(CONNECT, False, H2, True),
    Variant(CONNECT, True, H2, True),
    Variant(GRPC, False, H2, True),
    Variant(GRPC_WEB, False, H1, True),
    Variant(GRPC_WEB, False, H2, True),
]
COMPRESSIONS = ["identity", "gzip"]


@pytest.fixture(params=VARIANTS, ids=lambda v: v.id)
def variant(request: pytest.FixtureRequest) -> Variant:
    return request.param


@pytest.fixture(params=COMPRESSIONS)
def compression(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(
    variant: Variant,
    compression: str,
    testsvc_connect: ModuleType,
    request: pytest.FixtureRequest,
) -> Iterator[object]:
    server: RunningServer = request.getfixturevalue("tls_server" if variant.tls else "plain_server")
    ca = server.tls.ca_pem.read_bytes() if server.tls else None
    transport = SyncHTTPTransport(http_version=variant.http, tls_ca_cert=ca)
    kwargs: dict[str, object] = {
        "protocol": variant.protocol,
        "send_compression": GzipCompression() if compression == "gzip" else None,
    }
    if variant.json:
        kwargs["codec"] = google_protobuf_json_codec()
    http_client = SyncClient(transport)
    try:
        with testsvc_connect.TestServiceClientSync(
            server.url, http_client=http_client, **kwargs
        ) as c:
            yield c
    finally:
        transport.close()


def _request_headers(response: test_pb2.EchoResponse) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for header in response.request_headers:
        seen.setdefault(header.name, []).append(header.value)
    return seen


def _expected_content_type(variant: Variant) -> str:
    codec = "json" if variant.json else "proto"
    if variant.protocol == CONNECT:
        return f"application/{codec}"
    prefix = "application/grpc" if variant.protocol == GRPC else "application/grpc-web"
    return f"{prefix}+{codec}"


def test_unary_round_trip(client: object, variant: Variant, compression: str) -> None:
    payload = bytes(range(256)) * 8  # large enough to be worth compressing
    request = test_pb2.EchoRequest(
        message="héllo ☺ 😈",
        payload=payload,
        response_headers=[
            test_pb2.Header(name="x-resp", value="one"),
            test_pb2.Header(name="x-resp", value="two"),
        ],
        response_trailers=[test_pb2.Header(name="x-trail", value="done")],
    )
    with ResponseMetadata() as meta:
        response = client.echo(request, headers={"x-custom": "abc"})  # type: ignore[attr-defined]
    assert response.message == "héllo ☺ 😈"
    assert response.payload == payload
    assert response.protocol == variant.server_protocol
    seen = _request_headers(response)
    assert seen["x-custom"] == ["abc"]
    assert seen["content-type"] == [_expected_content_type(variant)]
    encoding_header = "content-encoding" if variant.protocol == CONNECT else "grpc-encoding"
    if compression == "gzip":
        assert seen[encoding_header] == ["gzip"]
    else:
        assert seen.get(encoding_header, ["identity"]) == ["identity"]
    assert meta.headers.getall("x-resp") == ["one", "two"]
    assert meta.trailers.getall("x-trail") == ["done"]


def test_server_stream(client: object, variant: Variant) -> None:
    request = test_pb2.CountRequest(
        count=5,
        response_headers=[test_pb2.Header(name="x-stream", value="h")],
        response_trailers=[test_pb2.Header(name="x-stream-trailer", value="t")],
    )
    with ResponseMetadata() as meta:
        numbers = [m.number for m in client.count(request)]  # type: ignore[attr-defined]
    assert numbers == [1, 2, 3, 4, 5]
    assert meta.headers.getall("x-stream") == ["h"]
    assert meta.trailers.getall("x-stream-trailer") == ["t"]


def test_server_stream_zero_messages(client: object) -> None:
    assert list(client.count(test_pb2.CountRequest(count=0))) == []  # type: ignore[attr-defined]


def test_server_stream_error_after_messages(client: object) -> None:
    received: list[int] = []
    with pytest.raises(ConnectError) as info:
        for message in client.count(  # type: ignore[attr-defined]
            test_pb2.CountRequest(count=2, fail_code=9, fail_message="stop here")
        ):
            received.append(message.number)
    assert received == [1, 2]
    assert info.value.code == Code.FAILED_PRECONDITION
    assert info.value.message == "stop here"


def test_error_with_details(client: object, variant: Variant, compression: str) -> None:
    # Detail types the server process knows: a JSON request carrying an Any can only be
    # decoded when the type is in the server's descriptor pool.
    detail_a = any_pb2.Any()
    detail_a.Pack(test_pb2.GetResponse(greeting="hi"))
    detail_b = any_pb2.Any()
    detail_b.Pack(test_pb2.Header(name="k", value="v"))
    message = "gone: ☺ 100%\nnext line"
    request = test_pb2.FailRequest(
        code=5,
        message=message,
        details=[detail_a, detail_b],
        response_headers=[test_pb2.Header(name="x-err-header", value="h")],
        response_trailers=[test_pb2.Header(name="x-err-trailer", value="t")],
    )
    with ResponseMetadata() as meta, pytest.raises(ConnectError) as info:
        client.fail(request)  # type: ignore[attr-defined]
    err = info.value
    assert err.code == Code.NOT_FOUND
    assert err.message == message
    assert [(d.type_name, d.message_bytes) for d in err.details] == [
        ("testsvc.v1.GetResponse", test_pb2.GetResponse(greeting="hi").SerializeToString()),
        ("testsvc.v1.Header", test_pb2.Header(name="k", value="v").SerializeToString()),
    ]
    # Connect unary maps the code to an HTTP status; gRPC and gRPC-Web always say 200.
    assert meta.http_status == (404 if variant.protocol == CONNECT else 200)
    assert meta.headers.getall("x-err-header") == ["h"]
    assert meta.trailers.getall("x-err-trailer") == ["t"]


@pytest.mark.parametrize("code", [Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.INTERNAL])
def test_error_codes(client: object, code: Code, compression: str) -> None:
    number = list(Code).index(code) + 1
    with pytest.raises(ConnectError) as info:
        client.fail(test_pb2.FailRequest(code=number, message="m"))  # type: ignore[attr-defined]
    assert info.value.code == code
    assert info.value.message == "m"


@pytest.mark.parametrize(
    "variant", [v for v in VARIANTS if v.protocol == CONNECT], ids=lambda v: v.id
)
def test_get(client: object, variant: Variant) -> None:
    """GET exists only in the Connect protocol."""
    with ResponseMetadata() as meta:
        response = client.get(test_pb2.GetRequest(name="Buf"), use_get=True)  # type: ignore[attr-defined]
    assert response.greeting == "Hello, Buf!"
    assert meta.headers.get("content-type") == _expected_content_type(variant)


def test_deadline_propagates(client: object) -> None:
    response = client.echo(test_pb2.EchoRequest(message="t"), timeout_ms=3000)  # type: ignore[attr-defined]
    assert 2.0 < response.timeout_seconds <= 3.0


def test_no_deadline_reports_zero(client: object) -> None:
    response = client.echo(test_pb2.EchoRequest(message="t"))  # type: ignore[attr-defined]
    assert response.timeout_seconds == 0.0


def test_deadline_exceeded(client: object) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        client.sleep(test_pb2.SleepRequest(ms=3000), timeout_ms=200)  # type: ignore[attr-defined]
    assert info.value.code == Code.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0


def test_client_stream(client: object) -> None:
    requests = [test_pb2.SumRequest(value=v) for v in (5, -2, 40)]
    response = client.sum(iter(requests))  # type: ignore[attr-defined]
    assert (response.total, response.count) == (43, 3)


def test_large_message(client: object) -> None:
    """2 MiB each way (2.7 MiB as JSON base64, under the 4 MiB limit): many frames or
    chunks, HTTP/2 flow control, and a big inflation with gzip."""
    payload = bytes(range(256)) * (2 * 1024 * 4)
    response = client.echo(test_pb2.EchoRequest(payload=payload))  # type: ignore[attr-defined]
    assert response.payload == payload


@pytest.mark.parametrize(
    "variant",
    [v for v in VARIANTS if not v.tls and not v.json] + [Variant(CONNECT, False, H1, True)],
    ids=lambda v: v.id,
)
def test_message_over_server_limit(
    variant: Variant, testsvc_connect: ModuleType, tmp_path: Path, tls_files: TlsFiles
) -> None:
    """The server's 4 MiB limit applies to the uncompressed size.

    Runs on a private server: over HTTP/2 the early answer can crash hypercorn's trio
    worker (see tests/connect_proto/test_h2_abuse.py).
    """
    with run_server("ours", tls_files if variant.tls else None, tmp_path) as server:
        ca = server.tls.ca_pem.read_bytes() if server.tls else None
        transport = SyncHTTPTransport(http_version=variant.http, tls_ca_cert=ca)
        try:
            client = testsvc_connect.TestServiceClientSync(
                server.url,
                protocol=variant.protocol,
                send_compression=None,
                http_client=SyncClient(transport),
            )
            # The server answers before it has read the whole body. A client still
            # uploading may then lose the answer: on HTTP/1.1 the server closes after a
            # bounded drain (hypercorn has no lingering close); on HTTP/2 hypercorn
            # drops the connection when DATA arrives for the finished stream
            # (hypercorn#329). UNAVAILABLE is the client's view of that; any other code
            # is wrong, and the server must live on.
            allowed = {Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE}
            for _ in range(3):
                with pytest.raises(ConnectError) as info:
                    client.echo(test_pb2.EchoRequest(payload=b"x" * (5 * 1024 * 1024)))
                assert info.value.code in allowed, info.value
        finally:
            transport.close()
        # The server survives: a new connection is served.
        assert server.process.poll() is None, server.log_text()[-4000:]
        transport = SyncHTTPTransport(http_version=variant.http, tls_ca_cert=ca)
        try:
            client = testsvc_connect.TestServiceClientSync(
                server.url, protocol=variant.protocol, http_client=SyncClient(transport)
            )
            assert client.echo(test_pb2.EchoRequest(message="ok")).message == "ok"
        finally:
            transport.close()
