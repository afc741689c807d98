"""Real sockets: hypercorn's trio worker on 127.0.0.1, driven by httpx and curl."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio
import trustme
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto import Code, RpcError
from connect_proto._app.app import ConnectApp
from connect_proto._client import ConnectClient
from connect_proto._server.serve import make_config, serve
from connect_proto._wire.envelope import EnvelopeDecoder, encode_envelope

SVC = "/testsvc.v1.TestService"
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")


@dataclass
class Running:
    port: int
    impl: TestServiceImpl
    lifespan_events: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start(nursery: trio.Nursery, **config_kwargs: object) -> Running:
    impl = TestServiceImpl()
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = ConnectApp([(TEST_SERVICE, impl)], lifespan=lifespan)
    port = await nursery.start(serve, app, make_config("127.0.0.1", 0, **config_kwargs))  # type: ignore[arg-type]
    return Running(port, impl, events)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Running:
    return await start(nursery)


async def curl(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    assert CURL is not None
    result = await trio.run_process(
        [CURL, "-sS", "--max-time", "10", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


async def curl_grpc(
    url: str, message: bytes, *headers: str, out_file: str = "/dev/null"
) -> tuple[int, bytes, bytes]:
    """One gRPC call with curl over h2c; stdout holds the headers and the trailers."""
    extra = [arg for header in headers for arg in ("-H", header)]
    return await curl(
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        *extra,
        "--data-binary",
        "@-",
        "-D",
        "-",
        "-o",
        out_file,
        url,
        stdin=encode_envelope(message),
    )


def frames(data: bytes) -> list[tuple[int, bytes]]:
    decoder = EnvelopeDecoder(1 << 24)
    out = [(e.flags, e.payload) for e in decoder.feed(data)]
    decoder.close()
    return out


# Lifecycle ------------------------------------------------------------------------------


async def test_serve_reports_ephemeral_port_and_runs_lifespan() -> None:
    async with trio.open_nursery() as nursery:
        running = await start(nursery)
        assert running.port > 0
        assert running.lifespan_events == ["startup"]
        nursery.cancel_scope.cancel()
    assert running.lifespan_events == ["startup", "shutdown"]


# Connect client over HTTP/1.1 and h2c --------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
@pytest.mark.parametrize("codec", ["proto", "json"])
@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_connect_client_unary_and_stream(
    server: Running, http2: bool, codec: str, compression: str | None
) -> None:
    async with ConnectClient(
        server.url, codec=codec, http2=http2, compression=compression
    ) as client:
        request = test_pb2.EchoRequest(
            message="hi",
            payload=b"p" * 5000,
            response_headers=[test_pb2.Header(name="x-h", value="1")],
            response_trailers=[test_pb2.Header(name="x-t", value="2")],
        )
        result = await client.unary_call(f"{SVC}/Echo", request, test_pb2.EchoResponse)
        assert result.message.message == "hi" and result.message.payload == b"p" * 5000
        assert result.headers.get("x-h") == "1" and result.trailers.get("x-t") == "2"
        if compression:
            assert result.headers.get("content-encoding") == "gzip"
        numbers = [
            m.number
            async for m in client.server_stream(
                f"{SVC}/Count", test_pb2.CountRequest(count=3), test_pb2.CountResponse
            )
        ]
        assert numbers == [1, 2, 3]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
async def test_connect_client_errors(server: Running, http2: bool) -> None:
    async with ConnectClient(server.url, http2=http2) as client:
        with pytest.raises(RpcError) as info:
            await client.unary(
                f"{SVC}/Fail", test_pb2.FailRequest(code=5, message="nf"), test_pb2.FailResponse
            )
        assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "nf")
        got: list[int] = []
        with pytest.raises(RpcError) as info:
            async for m in client.server_stream(
                f"{SVC}/Count",
                test_pb2.CountRequest(count=2, fail_code=10, fail_message="ab"),
                test_pb2.CountResponse,
            ):
                got.append(m.number)
        assert got == [1, 2] and info.value.code is Code.ABORTED
        with pytest.raises(RpcError) as info:
            await client.unary("/nope.Svc/X", test_pb2.GetRequest(), test_pb2.GetResponse)
        assert info.value.code is Code.UNIMPLEMENTED


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
async def test_connect_deadlines(server: Running, http2: bool) -> None:
    async with ConnectClient(server.url, http2=http2) as client:
        with pytest.raises(RpcError) as info:
            await client.unary(
                f"{SVC}/Sleep",
                test_pb2.SleepRequest(ms=5000),
                test_pb2.SleepResponse,
                timeout_ms=100,
            )
        assert info.value.code is Code.DEADLINE_EXCEEDED
        got: list[int] = []
        with pytest.raises(RpcError) as info:
            async for m in client.server_stream(
                f"{SVC}/Count",
                test_pb2.CountRequest(count=10, delay_ms=100),
                test_pb2.CountResponse,
                timeout_ms=250,
            ):
                got.append(m.number)
        assert got == [1, 2] and info.value.code is Code.DEADLINE_EXCEEDED
    assert "sleep" in server.impl.cancelled and "count" in server.impl.cancelled


async def test_tls_alpn_h2(nursery: trio.Nursery, tmp_path: object) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    from pathlib import Path

    base = Path(str(tmp_path))
    certfile, keyfile = base / "cert.pem", base / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    running = await start(nursery, certfile=str(certfile), keyfile=str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"https://127.0.0.1:{running.port}"
    async with httpx.AsyncClient(http2=True, verify=context) as raw:
        response = await raw.post(
            f"{url}{SVC}/Get",
            content=b'{"name":"tls"}',
            headers={"content-type": "application/json"},
        )
        assert response.http_version == "HTTP/2"
        assert response.json() == {"greeting": "Hello, tls!"}
    async with ConnectClient(url, http2=True, verify=context) as client:
        assert (
            await client.unary(f"{SVC}/Get", test_pb2.GetRequest(name="c"), test_pb2.GetResponse)
        ).greeting == "Hello, c!"


# gRPC-Web over httpx --------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
async def test_grpc_web_over_httpx(server: Running, http2: bool) -> None:
    async with httpx.AsyncClient(http1=not http2, http2=http2) as raw:
        response = await raw.post(
            f"{server.url}{SVC}/Count",
            content=encode_envelope(test_pb2.CountRequest(count=2).SerializeToString()),
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        got = frames(response.content)
        assert [f for f, _ in got] == [0, 0, 0x80]
        assert got[-1][1] == b"grpc-status: 0\r\n"
        slow = await raw.post(
            f"{server.url}{SVC}/Sleep",
            content=encode_envelope(test_pb2.SleepRequest(ms=5000).SerializeToString()),
            headers={"content-type": "application/grpc-web", "grpc-timeout": "100m"},
        )
        assert frames(slow.content)[-1][1].startswith(b"grpc-status: 4\r\n")


# Disconnect -----------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
async def test_client_disconnect_mid_stream_cancels_handler(server: Running, http2: bool) -> None:
    body = encode_envelope(test_pb2.CountRequest(count=100000, delay_ms=10).SerializeToString())
    async with httpx.AsyncClient(http1=not http2, http2=http2) as raw:
        async with raw.stream(
            "POST",
            f"{server.url}{SVC}/Count",
            content=body,
            headers={"content-type": "application/connect+proto"},
        ) as response:
            seen = 0
            async for chunk in response.aiter_raw():
                seen += len(chunk)
                if seen >= 10:
                    break
    with trio.fail_after(5):
        # Polling: the handler lives in the server's tasks, we only see its record.
        while "count" not in server.impl.cancelled:  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_http1_keep_alive_survives_early_rejection(server: Running) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        first = (
            b"DELETE /testsvc.v1.TestService/Echo HTTP/1.1\r\nhost: x\r\n"
            b"content-length: 5\r\n\r\nhello"
        )
        second = (
            b"POST /testsvc.v1.TestService/Get HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        )
        await stream.send_all(first + second)
        received = b""
        with trio.fail_after(5):
            while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b'"Hello, !"}'):
                data = await stream.receive_some()
                assert data, received
                received += data
    assert received.startswith(b"HTTP/1.1 405")
    assert b"HTTP/1.1 200" in received


# curl -----------------------------------------------------------------------------------


@needs_curl
async def test_curl_connect_json_unary(server: Running) -> None:
    rc, out, err = await curl(
        "-i",
        "--http1.1",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Connect-Protocol-Version: 1",
        "-d",
        '{"name":"x"}',
        f"{server.url}{SVC}/Get",
    )
    assert rc == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body) == {"greeting": "Hello, x!"}


@needs_curl
async def test_curl_connect_get(server: Running) -> None:
    rc, out, err = await curl(
        "--get",
        "--data-urlencode",
        "encoding=json",
        "--data-urlencode",
        'message={"name":"g"}',
        "--data-urlencode",
        "connect=v1",
        f"{server.url}{SVC}/Get",
    )
    assert rc == 0, err
    assert json.loads(out) == {"greeting": "Hello, g!"}


@needs_curl
@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"])
async def test_curl_connect_stream(server: Running, flag: str) -> None:
    rc, out, err = await curl(
        flag,
        "-H",
        "Content-Type: application/connect+json",
        "--data-binary",
        "@-",
        "-o",
        "-",
        f"{server.url}{SVC}/Count",
        stdin=encode_envelope(b'{"count":2}'),
    )
    assert rc == 0, err
    assert frames(out) == [(0, b'{"number":1}'), (0, b'{"number":2}'), (2, b"{}")]


@needs_curl
async def test_curl_grpc_trailers(server: Running, tmp_path: object) -> None:
    out_file = f"{tmp_path}/out.bin"
    rc, out, err = await curl_grpc(
        f"{server.url}{SVC}/Get",
        test_pb2.GetRequest(name="t").SerializeToString(),
        out_file=out_file,
    )
    assert rc == 0, err
    text = out.decode()
    assert text.startswith("HTTP/2 200")
    assert "grpc-status: 0" in text
    data = await trio.Path(out_file).read_bytes()
    assert test_pb2.GetResponse.FromString(frames(data)[0][1]).greeting == "Hello, t!"


@needs_curl
async def test_curl_grpc_deadline_and_error(server: Running) -> None:
    rc, out, err = await curl_grpc(
        f"{server.url}{SVC}/Sleep",
        test_pb2.SleepRequest(ms=5000).SerializeToString(),
        "grpc-timeout: 100m",
    )
    assert rc == 0, err
    assert "grpc-status: 4" in out.decode()
    rc, out, err = await curl_grpc(
        f"{server.url}{SVC}/Fail",
        test_pb2.FailRequest(code=3, message="bad ☺").SerializeToString(),
    )
    text = out.decode()
    assert "grpc-status: 3" in text and "grpc-message: bad %E2%98%BA" in text


@needs_curl
async def test_curl_grpc_over_http1_is_refused(server: Running) -> None:
    rc, out, err = await curl(
        "-i",
        "--http1.1",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "@-",
        f"{server.url}{SVC}/Get",
        stdin=encode_envelope(b""),
    )
    assert rc == 0, err
    assert out.startswith(b"HTTP/1.1 505")


@needs_curl
@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"])
async def test_curl_grpc_web_text(server: Running, flag: str) -> None:
    rc, out, err = await curl(
        flag,
        "-H",
        "content-type: application/grpc-web-text",
        "-H",
        "accept: application/grpc-web-text",
        "--data-binary",
        "@-",
        f"{server.url}{SVC}/Sleep",
        stdin=b"AAAAAAA=",
    )
    assert rc == 0, err
    assert out == b"AAAAAAA=gAAAABBncnBjLXN0YXR1czogMA0K"
    assert base64.b64decode(out[:8]) + base64.b64decode(out[8:]) == (
        encode_envelope(b"") + b"\x80\x00\x00\x00\x10grpc-status: 0\r\n"
    )


async def test_http1_oversized_content_length_is_answered_at_once_and_closed(
    server: Running,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(
            b"POST /testsvc.v1.TestService/Echo HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/proto\r\ncontent-length: 100000000\r\n\r\nabc"
        )
        received = b""
        with trio.fail_after(0.9):  # below the drain time bound: no waiting for the body
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                received += data
    assert received.startswith(b"HTTP/1.1 429")
    assert b"connection: close" in received.lower()


async def test_shutdown_with_a_stream_in_flight_is_bounded() -> None:
    body = encode_envelope(test_pb2.CountRequest(count=100000, delay_ms=20).SerializeToString())
    got_first = trio.Event()

    async def consume(url: str) -> None:
        async with httpx.AsyncClient(http1=False, http2=True) as raw:
            try:
                async with raw.stream(
                    "POST",
                    f"{url}{SVC}/Count",
                    content=body,
                    headers={"content-type": "application/connect+proto"},
                ) as response:
                    async for _ in response.aiter_raw():
                        got_first.set()
            except httpx.HTTPError:
                pass  # the server went away: expected

    start_time = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                running = await start(nursery, graceful_timeout=0.5)
                outer.start_soon(consume, running.url)
                await got_first.wait()
                nursery.cancel_scope.cancel()
            assert running.lifespan_events == ["startup", "shutdown"]
            outer.cancel_scope.cancel()
    assert trio.current_time() - start_time < 8
    assert "count" in running.impl.cancelled
