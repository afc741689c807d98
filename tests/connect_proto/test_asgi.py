"""The app driven in-process (no sockets): dispatch and each protocol's edge cases."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
from asgi_driver import Response, call_app
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._wire.envelope import encode_envelope
from connect_proto._wire.grpc import percent_decode

SVC = "/testsvc.v1.TestService"
JSON = [("content-type", "application/json")]
PROTO = [("content-type", "application/proto")]
STREAM_JSON = [("content-type", "application/connect+json")]
STREAM_PROTO = [("content-type", "application/connect+proto")]
GRPC = [("content-type", "application/grpc"), ("te", "trailers")]
WEB = [("content-type", "application/grpc-web+proto")]
WEB_TEXT = [("content-type", "application/grpc-web-text")]
UNICODE = "\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\n"
LIMIT = 1024


@pytest.fixture
def impl() -> TestServiceImpl:
    return TestServiceImpl()


@pytest.fixture
def app(impl: TestServiceImpl) -> ConnectApp:
    return ConnectApp([(TEST_SERVICE, impl)], max_message_size=LIMIT)


def env(message: Message | bytes, flags: int = 0) -> bytes:
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return encode_envelope(data, flags)


def end_stream(response: Response) -> dict:
    frames = response.envelopes()
    assert frames[-1][0] == 2, frames
    assert all(flags in (0, 1) for flags, _ in frames[:-1])
    return json.loads(frames[-1][1])


def grpc_status(response: Response) -> tuple[int, str]:
    assert response.status == 200
    return int(response.trailer("grpc-status") or -1), percent_decode(
        response.trailer("grpc-message") or ""
    )


def web_trailers(body: bytes) -> dict[str, list[str]]:
    flags = body[0]
    while flags != 0x80:  # skip data frames
        length = int.from_bytes(body[1:5], "big")
        body = body[5 + length :]
        flags = body[0]
    length = int.from_bytes(body[1:5], "big")
    assert len(body) == 5 + length, "nothing may follow the trailer frame"
    out: dict[str, list[str]] = {}
    for line in body[5:].decode().split("\r\n"):
        if line:
            name, _, value = line.partition(": ")
            out.setdefault(name, []).append(value)
    return out


# Dispatch: pick the protocol, refuse before it (404/405/415/505) --------------------------


async def test_unknown_path_is_404_unimplemented(app: ConnectApp) -> None:
    r = await call_app(app, path="/testsvc.v1.TestService/Nope", headers=JSON, body=b"{}")
    assert r.status == 404
    assert r.json()["code"] == "unimplemented"
    r = await call_app(app, path="/other.Svc/Echo", headers=GRPC, body=env(b""))
    assert r.status == 404


async def test_path_match_is_case_sensitive(app: ConnectApp) -> None:
    r = await call_app(app, path="/testsvc.v1.testservice/echo", headers=JSON, body=b"{}")
    assert r.status == 404


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
async def test_wrong_method_is_405_with_allow(app: ConnectApp, method: str) -> None:
    r = await call_app(app, method=method, path=f"{SVC}/Echo", headers=JSON, body=b"{}")
    assert (r.status, r.header("allow")) == (405, "POST")
    r = await call_app(app, method=method, path=f"{SVC}/Get", headers=JSON, body=b"{}")
    assert (r.status, r.header("allow")) == (405, "GET, POST")


async def test_get_on_non_idempotent_method_is_405(app: ConnectApp) -> None:
    r = await call_app(
        app, method="GET", path=f"{SVC}/Echo", query_string=b"encoding=json&message=%7B%7D"
    )
    assert (r.status, r.header("allow")) == (405, "POST")


@pytest.mark.parametrize(
    "content_type",
    ["image/jpeg", "application/foo", "application/grpc+foo", "application/connect+foo", None],
)
async def test_unsupported_content_type_is_415_with_accept_post(
    app: ConnectApp, content_type: str | None
) -> None:
    headers = [("content-type", content_type)] if content_type else []
    r = await call_app(app, path=f"{SVC}/Echo", headers=headers, body=b"{}")
    assert r.status == 415
    assert r.body == b""
    accept_post = r.header("accept-post")
    assert accept_post is not None
    listed = accept_post.split(", ")
    assert listed == sorted(listed)
    assert "application/grpc" in listed and "application/json" in listed


async def test_connect_unary_type_on_streaming_method_and_vice_versa_is_415(
    app: ConnectApp,
) -> None:
    r = await call_app(app, path=f"{SVC}/Count", headers=JSON, body=b"{}")
    assert r.status == 415
    r = await call_app(app, path=f"{SVC}/Echo", headers=STREAM_JSON, body=env(b"{}"))
    assert r.status == 415


async def test_header_case_on_http1_still_routes(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=[("Content-Type", "Application/JSON")],
        body=b'{"message":"x"}',
        http_version="1.1",
    )
    assert r.status == 200 and r.json()["message"] == "x"


async def test_json_charset_accepted_and_echoed(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=[("content-type", "application/json; charset=utf-8")],
        body=b"{}",
    )
    assert r.status == 200
    assert r.header("content-type") == "application/json; charset=utf-8"


async def test_grpc_over_http1_is_refused_not_hung(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Echo", headers=GRPC, body=env(b""), http_version="1.1")
    assert r.status == 505
    assert r.header("connection") == "close"


async def test_bidi_over_http1_is_505_for_every_protocol(app: ConnectApp) -> None:
    for headers in (STREAM_JSON, WEB):
        r = await call_app(app, path=f"{SVC}/Chat", headers=headers, body=b"", http_version="1.1")
        assert (r.status, r.header("connection")) == (505, "close")


async def test_grpc_without_te_trailers_is_refused(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[("content-type", "application/grpc")], body=env(b"")
    )
    assert r.status == 400
    assert r.header("grpc-status") == "3"
    assert "te: trailers" in (r.header("grpc-message") or "")


async def test_http_routes_take_precedence(impl: TestServiceImpl) -> None:
    async def health(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    app = ConnectApp([(TEST_SERVICE, impl)], http_routes={"/healthz": health})
    r = await call_app(app, method="GET", path="/healthz")
    assert r.status == 204


async def test_lifespan_startup_and_shutdown_in_process(impl: TestServiceImpl) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        seen.append("enter")
        yield
        seen.append("exit")

    app = ConnectApp([(TEST_SERVICE, impl)], lifespan=lifespan)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return inbox.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert seen == ["enter", "exit"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_lifespan_startup_failure_is_reported(impl: TestServiceImpl) -> None:
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    app = ConnectApp([(TEST_SERVICE, impl)], lifespan=lifespan)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "lifespan.startup"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"


# Connect unary (https://connectrpc.com/docs/protocol, Unary) ------------------------------


async def test_connect_unary_proto_and_empty_request(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Echo", headers=PROTO, body=b"")
    assert r.status == 200 and r.header("content-type") == "application/proto"
    response = test_pb2.EchoResponse.FromString(r.body)
    assert response.protocol == "connect"
    assert r.header("accept-encoding") == "gzip"


async def test_connect_unary_empty_response_is_zero_bytes_or_braces(app: ConnectApp) -> None:
    request = test_pb2.EchoRequest().SerializeToString()
    del request
    r = await call_app(app, path=f"{SVC}/Get", headers=PROTO, body=b"")
    assert r.status == 200
    json_r = await call_app(app, path=f"{SVC}/Sleep", headers=JSON, body=b"{}")
    assert json_r.body == b"{}"
    proto_r = await call_app(app, path=f"{SVC}/Sleep", headers=PROTO, body=b"")
    assert (proto_r.status, proto_r.body) == (200, b"")


async def test_connect_json_empty_body_and_trailing_garbage(app: ConnectApp) -> None:
    for body in (b"", b'{"message":"x"} garbage'):
        r = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=body)
        assert r.status == 400 and r.json()["code"] == "invalid_argument"


async def test_connect_headers_and_trailers(app: ConnectApp) -> None:
    request = {
        "responseHeaders": [{"name": "x-custom-header", "value": "foo"}],
        "responseTrailers": [{"name": "x-custom-trailer", "value": "bing"}],
    }
    r = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=json.dumps(request).encode())
    assert r.header("x-custom-header") == "foo"
    assert r.header("trailer-x-custom-trailer") == "bing"


async def test_duplicate_request_headers_reach_handler_in_order(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=[*JSON, ("x-dup", "Value1"), ("X-Dup", "Value2")],
        body=b"{}",
    )
    seen = [h["value"] for h in r.json()["requestHeaders"] if h["name"] == "x-dup"]
    assert seen == ["Value1", "Value2"]


async def test_duplicate_response_metadata_on_success_and_error(app: ConnectApp) -> None:
    request = {
        "responseHeaders": [{"name": "x-h", "value": v} for v in ("a", "b", "c")],
        "responseTrailers": [{"name": "x-t", "value": v} for v in ("d", "e")],
    }
    r = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=json.dumps(request).encode())
    assert r.header_all("x-h") == ["a", "b", "c"]
    assert r.header_all("trailer-x-t") == ["d", "e"]
    fail = {"code": 9, "message": "m", **request}
    r = await call_app(app, path=f"{SVC}/Fail", headers=JSON, body=json.dumps(fail).encode())
    assert r.status == 400
    assert r.header_all("x-h") == ["a", "b", "c"]
    assert r.header_all("trailer-x-t") == ["d", "e"]


@pytest.mark.parametrize("number", range(1, 17))
async def test_connect_unary_error_http_status_per_code(app: ConnectApp, number: int) -> None:
    from connect_proto import Code

    body = test_pb2.FailRequest(code=number, message="boom").SerializeToString()
    r = await call_app(app, path=f"{SVC}/Fail", headers=PROTO, body=body)
    code = Code.from_grpc(number)
    assert r.status == code.http_status
    assert r.header("content-type") == "application/json"  # even for application/proto
    assert r.json() == {"code": code.connect_name, "message": "boom"}


async def test_connect_error_details_and_unicode(app: ConnectApp) -> None:
    detail = any_pb2.Any()
    detail.Pack(wrappers_pb2.StringValue(value="hi"))
    body = test_pb2.FailRequest(code=14, message=UNICODE, details=[detail]).SerializeToString()
    r = await call_app(app, path=f"{SVC}/Fail", headers=PROTO, body=body)
    assert r.json() == {
        "code": "unavailable",
        "message": UNICODE,
        "details": [{"type": "google.protobuf.StringValue", "value": "CgJoaQ"}],
    }


async def test_protocol_version(app: ConnectApp) -> None:
    ok = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("connect-protocol-version", "1")], body=b"{}"
    )
    assert ok.status == 200
    bad = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("connect-protocol-version", "2")], body=b"{}"
    )
    assert (bad.status, bad.json()["code"]) == (400, "invalid_argument")
    stream = await call_app(
        app,
        path=f"{SVC}/Count",
        headers=[*STREAM_JSON, ("connect-protocol-version", "2")],
        body=env(b"{}"),
    )
    assert stream.status == 200
    assert end_stream(stream)["error"]["code"] == "invalid_argument"


async def test_connect_unknown_content_encoding_is_501_listing_supported(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("content-encoding", "foo")], body=b"{}"
    )
    assert r.status == 501
    assert r.json()["code"] == "unimplemented"
    assert "gzip" in r.json()["message"]
    assert r.header("accept-encoding") == "gzip"


async def test_connect_gzip_round_trip_and_empty_never_compressed(impl: TestServiceImpl) -> None:
    app = ConnectApp([(TEST_SERVICE, impl)], compress_min_bytes=0)
    request = json.dumps({"message": "m" * 3000}).encode()
    r = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=[*JSON, ("content-encoding", "gzip"), ("accept-encoding", "br, gzip")],
        body=gzip.compress(request),
    )
    assert r.status == 200 and r.header("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(r.body))["message"] == "m" * 3000
    empty = await call_app(
        app, path=f"{SVC}/Sleep", headers=[*PROTO, ("accept-encoding", "gzip")], body=b""
    )
    assert empty.body == b"" and empty.header("content-encoding") is None


async def test_connect_zip_bomb_is_resource_exhausted(app: ConnectApp) -> None:
    bomb = gzip.compress(b'{"message":"' + b"a" * 1_000_000 + b'"}')
    assert len(bomb) < LIMIT
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("content-encoding", "gzip")], body=bomb
    )
    assert (r.status, r.json()["code"]) == (429, "resource_exhausted")


async def test_connect_message_size_limit_exact_and_over(app: ConnectApp) -> None:
    def sized(n: int) -> bytes:
        return test_pb2.EchoRequest(payload=b"x" * (n - 3)).SerializeToString()

    assert len(sized(LIMIT)) == LIMIT
    ok = await call_app(app, path=f"{SVC}/Echo", headers=PROTO, body=sized(LIMIT))
    assert ok.status == 200
    over = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=PROTO,
        body=[sized(LIMIT + 10)[:500], sized(LIMIT + 10)[500:]],
    )
    assert (over.status, over.json()["code"]) == (429, "resource_exhausted")


async def test_content_length_too_big_rejected_early(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=[*PROTO, ("content-length", str(10 * LIMIT))],
        body=[b"x"] * 3,
        http_version="1.1",
    )
    assert r.status == 429


@pytest.mark.parametrize("value", ["12345678901", "abc", "-5"])
async def test_connect_bad_timeout_is_invalid_argument(app: ConnectApp, value: str) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("connect-timeout-ms", value)], body=b"{}"
    )
    assert (r.status, r.json()["code"]) == (400, "invalid_argument")


async def test_connect_timeout_zero_is_already_expired(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("connect-timeout-ms", "0")], body=b"{}"
    )
    assert (r.status, r.json()["code"]) == (504, "deadline_exceeded")


async def test_deadline_propagates_to_handler(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("connect-timeout-ms", "2000")], body=b"{}"
    )
    assert 1.5 <= r.json()["timeoutSeconds"] <= 2.0


async def test_unexpected_exception_is_internal_without_internals(
    impl: TestServiceImpl, caplog: pytest.LogCaptureFixture
) -> None:
    async def echo(request: object, ctx: object) -> object:
        raise KeyError("secret-internal-detail")

    impl.echo = echo  # type: ignore[method-assign]
    app = ConnectApp([(TEST_SERVICE, impl)])
    r = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=b"{}")
    assert (r.status, r.json()["code"]) == (500, "internal")
    assert b"secret" not in r.body
    assert "secret-internal-detail" in caplog.text


async def test_rpc_error_from_inside_a_nursery_is_unwrapped(impl: TestServiceImpl) -> None:
    from connect_proto import Code, RpcError

    async def echo(request: object, ctx: object) -> object:
        async def fail() -> None:
            raise RpcError(Code.NOT_FOUND, "gone")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        return None

    impl.echo = echo  # type: ignore[method-assign]
    app = ConnectApp([(TEST_SERVICE, impl)])
    r = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=b"{}")
    assert (r.status, r.json()["code"]) == (404, "not_found")


# Connect unary GET (https://connectrpc.com/docs/protocol, Unary-Get-Request) --------------


async def test_get_vector(app: ConnectApp) -> None:
    r = await call_app(
        app,
        method="GET",
        path=f"{SVC}/Get",
        query_string=b"encoding=json&message=%7B%22name%22%3A%22Buf%22%7D&connect=v1",
    )
    assert r.status == 200 and r.header("content-type") == "application/json"
    assert r.json() == {"greeting": "Hello, Buf!"}
    assert r.header("vary") == "Accept-Encoding"


@pytest.mark.parametrize(
    "query",
    [
        b"connect=v1&message=%7B%22name%22%3A%22Buf%22%7D&encoding=json&extra=1",
        b"encoding=proto&base64=1&message=" + base64.urlsafe_b64encode(b"\x0a\x03Buf").rstrip(b"="),
        b"encoding=proto&base64=1&message="
        + base64.urlsafe_b64encode(b"\x0a\x02Bu").replace(b"=", b"%3D"),
    ],
)
async def test_get_variants(app: ConnectApp, query: bytes) -> None:
    r = await call_app(app, method="GET", path=f"{SVC}/Get", query_string=query)
    assert r.status == 200
    assert r.body.startswith(b'{"greeting":"Hello, Bu') or b"Hello, Bu" in r.body


async def test_get_with_gzip_compression(app: ConnectApp) -> None:
    payload = base64.urlsafe_b64encode(gzip.compress(b'{"name":"Z"}')).decode()
    query = f"encoding=json&base64=1&compression=gzip&message={payload}".encode()
    r = await call_app(app, method="GET", path=f"{SVC}/Get", query_string=query)
    assert r.json() == {"greeting": "Hello, Z!"}


async def test_get_errors(app: ConnectApp) -> None:
    missing_message = await call_app(
        app, method="GET", path=f"{SVC}/Get", query_string=b"encoding=json"
    )
    assert (missing_message.status, missing_message.json()["code"]) == (400, "invalid_argument")
    for query in (b"message=%7B%7D", b"encoding=&message=%7B%7D", b"encoding=xml&message=1"):
        r = await call_app(app, method="GET", path=f"{SVC}/Get", query_string=query)
        assert r.status == 415
    bad_connect = await call_app(
        app,
        method="GET",
        path=f"{SVC}/Get",
        query_string=b"encoding=json&message=%7B%7D&connect=v2",
    )
    assert bad_connect.status == 400
    bad_compression = await call_app(
        app,
        method="GET",
        path=f"{SVC}/Get",
        query_string=b"encoding=json&message=%7B%7D&compression=foo",
    )
    assert (bad_compression.status, bad_compression.json()["code"]) == (501, "unimplemented")


async def test_get_with_body_is_415(app: ConnectApp) -> None:
    r = await call_app(
        app,
        method="GET",
        path=f"{SVC}/Get",
        headers=[("content-length", "2")],
        body=b"{}",
        query_string=b"encoding=json&message=%7B%7D",
    )
    assert r.status == 415


# Connect streaming (https://connectrpc.com/docs/protocol, Streaming) ----------------------


async def test_connect_stream_success_with_trailers(app: ConnectApp) -> None:
    request = test_pb2.CountRequest(
        count=3,
        response_headers=[test_pb2.Header(name="x-h", value="1")],
        response_trailers=[
            test_pb2.Header(name="x-t", value="a"),
            test_pb2.Header(name="x-t", value="b"),
        ],
    )
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_PROTO, body=env(request))
    assert r.status == 200 and r.header("content-type") == "application/connect+proto"
    assert r.header("x-h") == "1"
    frames = r.envelopes()
    assert [test_pb2.CountResponse.FromString(p).number for _, p in frames[:-1]] == [1, 2, 3]
    assert end_stream(r) == {"metadata": {"x-t": ["a", "b"]}}


async def test_connect_stream_zero_responses(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_JSON, body=env(b"{}"))
    assert r.body == bytes.fromhex("02 00 00 00 02 7b 7d")


@pytest.mark.parametrize("count", [0, 2])
async def test_connect_stream_fail_before_and_after_messages(app: ConnectApp, count: int) -> None:
    body = json.dumps({"count": count, "failCode": 14, "failMessage": UNICODE}).encode()
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_JSON, body=env(body))
    assert r.status == 200
    assert len(r.envelopes()) == count + 1
    assert end_stream(r)["error"] == {"code": "unavailable", "message": UNICODE}


@pytest.mark.parametrize("body", [b"", env(b"{}") + env(b"{}")])
async def test_connect_stream_wrong_message_count_is_unimplemented(
    app: ConnectApp, body: bytes
) -> None:
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_JSON, body=body)
    assert r.status == 200
    assert end_stream(r)["error"]["code"] == "unimplemented"


async def test_connect_stream_unknown_encoding(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Count",
        headers=[*STREAM_JSON, ("connect-content-encoding", "foo")],
        body=env(b"{}"),
    )
    assert r.status == 200
    error = end_stream(r)["error"]
    assert error["code"] == "unimplemented" and "gzip" in error["message"]


async def test_connect_stream_compressed_flag_without_encoding_is_internal(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_JSON, body=env(b"{}", 1))
    assert end_stream(r)["error"]["code"] == "internal"


async def test_connect_stream_end_stream_flag_in_request_is_rejected(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_JSON, body=env(b"{}", 2))
    assert end_stream(r)["error"]["code"] == "invalid_argument"


async def test_connect_stream_gzip_both_ways(app: ConnectApp) -> None:
    request = gzip.compress(json.dumps({"count": 2}).encode())
    r = await call_app(
        app,
        path=f"{SVC}/Sum",
        headers=[*STREAM_JSON, ("connect-content-encoding", "gzip")],
        body=env(gzip.compress(b'{"value":"5"}'), 1) + env(b'{"value":"6"}'),
    )
    del request
    frames = r.envelopes()
    assert json.loads(frames[0][1]) == {"total": "11", "count": 2}


async def test_connect_stream_oversized_and_truncated_envelopes(app: ConnectApp) -> None:
    big = await call_app(
        app, path=f"{SVC}/Count", headers=STREAM_JSON, body=b"\x00\xff\xff\xff\xff{}}"
    )
    assert end_stream(big)["error"]["code"] == "resource_exhausted"
    cut = await call_app(
        app, path=f"{SVC}/Count", headers=STREAM_JSON, body=b"\x00\x00\x00\x00\x0a{}}}"
    )
    assert end_stream(cut)["error"]["code"] == "invalid_argument"


async def test_connect_stream_empty_envelope_is_empty_message(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Count", headers=STREAM_PROTO, body=env(b""))
    assert end_stream(r) == {}


async def test_connect_stream_deadline_mid_stream_after_two_messages(app: ConnectApp) -> None:
    body = env(test_pb2.CountRequest(count=10, delay_ms=60))
    r = await call_app(
        app, path=f"{SVC}/Count", headers=[*STREAM_PROTO, ("connect-timeout-ms", "150")], body=body
    )
    frames = r.envelopes()
    assert len(frames) == 3
    assert end_stream(r)["error"]["code"] == "deadline_exceeded"


async def test_client_streaming_and_bidi_over_connect(app: ConnectApp) -> None:
    body = b"".join(env(json.dumps({"value": v}).encode()) for v in (1, 2, 3))
    r = await call_app(app, path=f"{SVC}/Sum", headers=STREAM_JSON, body=[body[:7], body[7:]])
    assert json.loads(r.envelopes()[0][1]) == {"total": "6", "count": 3}
    chat = b"".join(env(json.dumps({"text": t}).encode()) for t in "ab")
    r = await call_app(app, path=f"{SVC}/Chat", headers=STREAM_JSON, body=chat)
    assert [json.loads(p) for f, p in r.envelopes()[:-1]] == [
        {"text": "echo: a"},
        {"text": "echo: b"},
    ]


# Disconnect ----------------------------------------------------------------------------------


async def test_disconnect_mid_stream_cancels_handler_and_writes_nothing_more(
    app: ConnectApp, impl: TestServiceImpl
) -> None:
    body = env(test_pb2.CountRequest(count=1000, delay_ms=5))
    r = await call_app(
        app, path=f"{SVC}/Count", headers=STREAM_PROTO, body=body, disconnect_after_bodies=2
    )
    assert impl.cancelled == ["count"]
    assert not r.complete
    assert len(r.envelopes()) == 2


# gRPC (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) --------------------


async def test_grpc_unary_success_shape(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Get", headers=GRPC, body=env(test_pb2.GetRequest(name="g"))
    )
    assert r.wants_trailers
    assert r.header("content-type") == "application/grpc"
    assert r.header("grpc-accept-encoding") == "gzip"
    (frame,) = r.envelopes()
    assert test_pb2.GetResponse.FromString(frame[1]).greeting == "Hello, g!"
    assert grpc_status(r) == (0, "")
    assert [e["type"] for e in r.events][-1] == "http.response.trailers"


async def test_grpc_proto_sub_formats(app: ConnectApp) -> None:
    for ct in ("application/grpc", "application/grpc+proto"):
        r = await call_app(
            app,
            path=f"{SVC}/Get",
            headers=[("content-type", ct), ("te", "trailers")],
            body=env(b""),
        )
        assert grpc_status(r) == (0, "") and r.header("content-type") == ct


async def test_grpc_json_codec(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Get",
        headers=[("content-type", "application/grpc+json"), ("te", "trailers")],
        body=env(b'{"name":"j"}'),
    )
    assert json.loads(r.envelopes()[0][1]) == {"greeting": "Hello, j!"}


async def test_grpc_empty_response_is_lpm_of_zeroes(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Sleep", headers=GRPC, body=env(b""))
    assert r.body == b"\x00\x00\x00\x00\x00"


async def test_grpc_error_status_message_and_details(app: ConnectApp) -> None:
    from google.rpc import status_pb2

    from connect_proto._wire.b64 import decode_lenient

    detail = any_pb2.Any()
    detail.Pack(wrappers_pb2.StringValue(value="hi"))
    request = test_pb2.FailRequest(
        code=7,
        message=UNICODE,
        details=[detail],
        response_trailers=[test_pb2.Header(name="x-t", value="1")],
    )
    r = await call_app(app, path=f"{SVC}/Fail", headers=GRPC, body=env(request))
    assert r.body == b""
    assert grpc_status(r) == (7, UNICODE)
    assert "%0A" in (r.trailer("grpc-message") or "")
    status = status_pb2.Status.FromString(
        decode_lenient(r.trailer("grpc-status-details-bin") or "")
    )
    assert (status.code, status.message, status.details[0].value) == (7, UNICODE, b"\x0a\x02hi")
    assert r.trailer("x-t") == "1"


@pytest.mark.parametrize("body", [b"", env(b"") + env(b"")])
async def test_grpc_wrong_message_count_is_12(app: ConnectApp, body: bytes) -> None:
    r = await call_app(app, path=f"{SVC}/Echo", headers=GRPC, body=body)
    assert grpc_status(r)[0] == 12


async def test_grpc_unknown_encoding_is_12_with_accept_encoding(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*GRPC, ("grpc-encoding", "foo")], body=env(b"")
    )
    assert grpc_status(r)[0] == 12
    accepted = r.header("grpc-accept-encoding") or ""
    assert "gzip" in accepted and "foo" not in accepted


async def test_grpc_compressed_flag_with_identity_is_13(app: ConnectApp) -> None:
    r = await call_app(app, path=f"{SVC}/Echo", headers=GRPC, body=env(b"", 1))
    assert grpc_status(r)[0] == 13


async def test_grpc_gzip_round_trip(impl: TestServiceImpl) -> None:
    app = ConnectApp([(TEST_SERVICE, impl)], compress_min_bytes=0)
    request = test_pb2.EchoRequest(payload=b"z" * 900).SerializeToString()
    r = await call_app(
        app,
        path=f"{SVC}/Echo",
        headers=[*GRPC, ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")],
        body=env(gzip.compress(request), 1),
    )
    assert r.header("grpc-encoding") == "gzip"
    flags, payload = r.envelopes()[0]
    assert flags == 1
    assert test_pb2.EchoResponse.FromString(gzip.decompress(payload)).payload == b"z" * 900


async def test_grpc_does_not_compress_unless_accepted(app: ConnectApp) -> None:
    request = test_pb2.EchoRequest(payload=b"z" * 900)
    r = await call_app(app, path=f"{SVC}/Echo", headers=GRPC, body=env(request))
    assert r.header("grpc-encoding") is None and r.envelopes()[0][0] == 0


@pytest.mark.parametrize("value", ["100000000m", "5x", ""])
async def test_grpc_bad_timeout_is_3(app: ConnectApp, value: str) -> None:
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*GRPC, ("grpc-timeout", value)], body=env(b"")
    )
    assert grpc_status(r)[0] == 3


async def test_grpc_oversized_truncated_and_garbage(app: ConnectApp) -> None:
    big = await call_app(
        app, path=f"{SVC}/Echo", headers=GRPC, body=b"\x00\xff\xff\xff\xff\x01\x02\x03"
    )
    assert grpc_status(big)[0] == 8
    cut = await call_app(
        app, path=f"{SVC}/Echo", headers=GRPC, body=b"\x00\x00\x00\x00\x0a\x01\x02\x03\x04"
    )
    assert grpc_status(cut)[0] == 3
    garbage = await call_app(app, path=f"{SVC}/Echo", headers=GRPC, body=env(b"\xff\xff"))
    assert grpc_status(garbage)[0] == 3


async def test_grpc_deadline_mid_stream(app: ConnectApp) -> None:
    body = env(test_pb2.CountRequest(count=10, delay_ms=60))
    r = await call_app(
        app, path=f"{SVC}/Count", headers=[*GRPC, ("grpc-timeout", "150m")], body=body
    )
    assert len(r.envelopes()) == 2
    assert grpc_status(r)[0] == 4


async def test_grpc_client_streaming_and_bidi(app: ConnectApp) -> None:
    body = b"".join(env(test_pb2.SumRequest(value=v)) for v in (4, 5))
    r = await call_app(app, path=f"{SVC}/Sum", headers=GRPC, body=[body[:3], body[3:]])
    assert test_pb2.SumResponse.FromString(r.envelopes()[0][1]) == test_pb2.SumResponse(
        total=9, count=2
    )
    r = await call_app(
        app, path=f"{SVC}/Chat", headers=GRPC, body=env(test_pb2.ChatRequest(text="x"))
    )
    assert test_pb2.ChatResponse.FromString(r.envelopes()[0][1]).text == "echo: x"
    assert grpc_status(r) == (0, "")


# gRPC-Web (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md) ------------------


@pytest.mark.parametrize("http_version", ["1.1", "2"])
@pytest.mark.parametrize("ct", ["application/grpc-web", "application/grpc-web+proto"])
async def test_grpc_web_binary(app: ConnectApp, http_version: str, ct: str) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Get",
        headers=[("content-type", ct)],
        body=env(test_pb2.GetRequest(name="w")),
        http_version=http_version,
    )
    assert r.status == 200 and r.header("content-type") == ct and not r.trailers
    _, payload = r.envelopes()[0]
    assert test_pb2.GetResponse.FromString(payload).greeting == "Hello, w!"
    assert web_trailers(r.body) == {"grpc-status": ["0"]}


async def test_grpc_web_error_and_trailers(app: ConnectApp) -> None:
    request = test_pb2.FailRequest(
        code=5,
        message=UNICODE,
        response_trailers=[test_pb2.Header(name="x-t", value=v) for v in ("1", "2")],
    )
    r = await call_app(app, path=f"{SVC}/Fail", headers=WEB, body=env(request), http_version="1.1")
    trailers = web_trailers(r.body)
    assert trailers["grpc-status"] == ["5"]
    assert percent_decode(trailers["grpc-message"][0]) == UNICODE
    assert trailers["x-t"] == ["1", "2"]


async def test_grpc_web_text_vector(app: ConnectApp) -> None:
    r = await call_app(
        app, path=f"{SVC}/Sleep", headers=WEB_TEXT, body=b"AAAAAAA=", http_version="1.1"
    )
    assert r.body == b"AAAAAAA=gAAAABBncnBjLXN0YXR1czogMA0K"


async def test_grpc_web_text_streaming_chunks(app: ConnectApp) -> None:
    body = base64.b64encode(env(test_pb2.CountRequest(count=2)))
    r = await call_app(app, path=f"{SVC}/Count", headers=WEB_TEXT, body=[body[:5], body[5:]])
    chunks = [e["body"] for e in r.events if e["type"] == "http.response.body"]
    decoded = b"".join(base64.b64decode(c) for c in chunks)
    assert decoded.startswith(env(test_pb2.CountResponse(number=1)))
    assert web_trailers(decoded) == {"grpc-status": ["0"]}


@pytest.mark.parametrize("headers", [WEB, WEB_TEXT])
async def test_grpc_web_unexpected_requests(
    app: ConnectApp, headers: Sequence[tuple[str, str]]
) -> None:
    def encode(body: bytes) -> bytes:
        return base64.b64encode(body) if headers is WEB_TEXT else body

    cases = [
        ([], encode(b""), "12"),
        ([], encode(env(b"") + env(b"")), "12"),
        ([("grpc-encoding", "foo")], encode(env(b"")), "12"),
        ([], encode(env(b"", 1)), "13"),
    ]
    for extra, body, status in cases:
        r = await call_app(app, path=f"{SVC}/Echo", headers=[*headers, *extra], body=body)
        raw = base64.b64decode(r.body) if headers is WEB_TEXT else r.body
        assert web_trailers(raw)["grpc-status"] == [status]


async def test_grpc_web_deadline(app: ConnectApp) -> None:
    r = await call_app(
        app,
        path=f"{SVC}/Sleep",
        headers=[*WEB, ("grpc-timeout", "50m")],
        body=env(test_pb2.SleepRequest(ms=5000)),
        http_version="1.1",
    )
    assert web_trailers(r.body)["grpc-status"] == ["4"]


# Keep-alive after early rejection ----------------------------------------------------------


async def test_early_rejection_drains_small_body_keeps_connection(app: ConnectApp) -> None:
    r = await call_app(
        app, method="DELETE", path=f"{SVC}/Echo", body=[b"a", b"b"], http_version="1.1"
    )
    assert r.status == 405 and r.header("connection") is None


async def test_early_rejection_with_huge_body_asks_to_close(app: ConnectApp) -> None:
    chunks = [b"x" * 65536] * 40  # 2.5 MiB: past the drain bound
    r = await call_app(app, method="DELETE", path=f"{SVC}/Echo", body=chunks, http_version="1.1")
    assert r.status == 405 and r.header("connection") == "close"


async def test_te_must_be_exactly_trailers_like_hypercorn_requires(app: ConnectApp) -> None:
    headers = [("content-type", "application/grpc"), ("te", "Trailers, deflate")]
    r = await call_app(app, path=f"{SVC}/Get", headers=headers, body=env(b""))
    assert r.status == 400


async def test_grpc_duplicate_trailers_are_repeated_fields(app: ConnectApp) -> None:
    request = test_pb2.EchoRequest(
        response_headers=[test_pb2.Header(name="x-h", value=v) for v in ("a", "b", "c")],
        response_trailers=[test_pb2.Header(name="x-t", value=v) for v in ("d", "e")],
    )
    r = await call_app(app, path=f"{SVC}/Echo", headers=GRPC, body=env(request))
    assert r.header_all("x-h") == ["a", "b", "c"]
    assert [v for k, v in r.trailers if k == b"x-t"] == [b"d", b"e"]


async def test_missing_handler_method_answers_unimplemented() -> None:
    app = ConnectApp([(TEST_SERVICE, object())])
    r = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=b"{}")
    assert (r.status, r.json()["code"]) == (501, "unimplemented")
    r = await call_app(app, path=f"{SVC}/Count", headers=GRPC, body=env(b""))
    assert grpc_status(r)[0] == 12


# CORS (opt-in) -------------------------------------------------------------------------


async def test_cors_preflight_and_response_headers(impl: TestServiceImpl) -> None:
    from connect_proto._extras.cors import CorsPolicy

    policy = CorsPolicy(allow_origins=["https://ui.example"], expose_headers=["x-t"])
    app = ConnectApp([(TEST_SERVICE, impl)], cors=policy)
    preflight = await call_app(
        app,
        method="OPTIONS",
        path=f"{SVC}/Echo",
        headers=[("origin", "https://ui.example"), ("access-control-request-method", "POST")],
        http_version="1.1",
    )
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == "https://ui.example"
    assert "connect-protocol-version" in (preflight.header("access-control-allow-headers") or "")
    refused = await call_app(
        app,
        method="OPTIONS",
        path=f"{SVC}/Echo",
        headers=[("origin", "https://evil.example"), ("access-control-request-method", "POST")],
    )
    assert refused.status == 403 and refused.header("access-control-allow-origin") is None
    r = await call_app(
        app, path=f"{SVC}/Echo", headers=[*JSON, ("origin", "https://ui.example")], body=b"{}"
    )
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "https://ui.example"
    exposed = r.header("access-control-expose-headers") or ""
    assert "grpc-status" in exposed and "x-t" in exposed
    plain = await call_app(app, path=f"{SVC}/Echo", headers=JSON, body=b"{}")
    assert plain.header("access-control-allow-origin") is None


async def test_without_cors_options_is_405(app: ConnectApp) -> None:
    r = await call_app(
        app,
        method="OPTIONS",
        path=f"{SVC}/Echo",
        headers=[("origin", "https://ui.example"), ("access-control-request-method", "POST")],
    )
    assert r.status == 405
