"""Interop: plain ``curl`` against our layer, bytes on the wire checked by hand.

curl knows no RPC protocol, so these tests pin the wire format itself: Connect JSON
unary and GET, the Connect streaming envelope and end-stream message, gRPC trailers
(printed by ``-D``) and the gRPC-Web text encoding, plus deadlines that only the server
can enforce (curl ignores Connect-Timeout-Ms and grpc-timeout).
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2
from servers import RunningServer, require_curl
from testsvc.v1 import test_pb2

SERVICE = "testsvc.v1.TestService"


@dataclass
class CurlResult:
    status: int
    headers: dict[str, list[str]]  # lowercase names, response headers
    trailers: dict[str, list[str]]  # HTTP/2 trailers (after the header block in -D)
    body: bytes
    elapsed: float


def curl(
    server: RunningServer,
    path: str,
    *args: str,
    body: bytes | None = None,
    http: str = "h1",
    tmp_path: Path,
) -> CurlResult:
    dump = tmp_path / "headers.txt"
    out = tmp_path / "body.bin"
    argv = [require_curl(), "-sS", "-D", str(dump), "-o", str(out), "--max-time", "20"]
    argv.append("--http1.1" if http == "h1" else "--http2-prior-knowledge")
    if http == "h2" and server.tls:
        argv[-1] = "--http2"  # ALPN over TLS
    if server.tls:
        argv += ["--cacert", str(server.tls.ca_pem)]
    if body is not None:
        argv += ["--data-binary", "@-"]
    argv += [*args, f"{server.url}{path}"]
    start = time.monotonic()
    proc = subprocess.run(argv, input=body, capture_output=True, timeout=30, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    status = 0
    headers: dict[str, list[str]] = {}
    trailers: dict[str, list[str]] = {}
    target = headers
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("HTTP/"):  # a (new) status line: interim responses are replaced
            status = int(line.split()[1])
            headers, trailers = {}, {}
            target = headers
        elif not line.strip():
            target = trailers  # anything after the header block: HTTP/2 trailers
        elif ":" in line:
            name, _, value = line.partition(":")
            target.setdefault(name.strip().lower(), []).append(value.strip())
    return CurlResult(status, headers, trailers, out.read_bytes(), elapsed)


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_envelopes(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        frames.append((flags, data[5 : 5 + length]))
        data = data[5 + length :]
    return frames


@pytest.fixture(params=["h1", "h2"])
def http(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["plain", "tls"])
def server(request: pytest.FixtureRequest) -> RunningServer:
    return request.getfixturevalue("tls_server" if request.param == "tls" else "plain_server")


# ----------------------------------------------------------------- Connect unary


def test_connect_json_unary(server: RunningServer, http: str, tmp_path: Path) -> None:
    request = {
        "message": "hi ☺",
        "responseHeaders": [{"name": "x-resp", "value": "h"}],
        "responseTrailers": [
            {"name": "x-trail", "value": "t1"},
            {"name": "x-trail", "value": "t2"},
        ],
    }
    result = curl(
        server,
        f"/{SERVICE}/Echo",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Connect-Protocol-Version: 1",
        body=json.dumps(request).encode(),
        http=http,
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.headers["content-type"] == ["application/json"]
    response = json.loads(result.body)
    assert response["message"] == "hi ☺"
    assert response["protocol"] == "connect"
    assert result.headers["x-resp"] == ["h"]
    assert result.headers["trailer-x-trail"] == ["t1", "t2"]


def test_connect_json_error(plain_server: RunningServer, http: str, tmp_path: Path) -> None:
    detail = {"@type": "type.googleapis.com/testsvc.v1.Header", "name": "n", "value": "v"}
    request = {"code": 5, "message": "nope\n☺", "details": [detail]}
    result = curl(
        plain_server,
        f"/{SERVICE}/Fail",
        "-H",
        "Content-Type: application/json",
        body=json.dumps(request).encode(),
        http=http,
        tmp_path=tmp_path,
    )
    assert result.status == 404
    assert result.headers["content-type"] == ["application/json"]
    error = json.loads(result.body)
    assert error["code"] == "not_found"
    assert error["message"] == "nope\n☺"
    [d] = error["details"]
    assert d["type"] == "testsvc.v1.Header"
    raw = base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4))
    assert raw == test_pb2.Header(name="n", value="v").SerializeToString()


def test_connect_proto_error_is_json(plain_server: RunningServer, tmp_path: Path) -> None:
    body = test_pb2.FailRequest(code=16, message="who are you").SerializeToString()
    result = curl(
        plain_server,
        f"/{SERVICE}/Fail",
        "-H",
        "Content-Type: application/proto",
        body=body,
        tmp_path=tmp_path,
    )
    assert result.status == 401
    assert result.headers["content-type"] == ["application/json"]
    assert json.loads(result.body) == {"code": "unauthenticated", "message": "who are you"}


def test_connect_gzip_round_trip(plain_server: RunningServer, http: str, tmp_path: Path) -> None:
    request = test_pb2.EchoRequest(message="z" * 5000)
    result = curl(
        plain_server,
        f"/{SERVICE}/Echo",
        "-H",
        "Content-Type: application/proto",
        "-H",
        "Content-Encoding: gzip",
        "-H",
        "Accept-Encoding: gzip",
        body=gzip.compress(request.SerializeToString()),
        http=http,
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.headers["content-encoding"] == ["gzip"]
    response = test_pb2.EchoResponse.FromString(gzip.decompress(result.body))
    assert response.message == "z" * 5000
    assert ("content-encoding", "gzip") in [(h.name, h.value) for h in response.request_headers]


def test_connect_timeout_enforced_by_server(plain_server: RunningServer, tmp_path: Path) -> None:
    result = curl(
        plain_server,
        f"/{SERVICE}/Sleep",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Connect-Timeout-Ms: 200",
        body=b'{"ms": 3000}',
        tmp_path=tmp_path,
    )
    assert result.status == 504
    assert json.loads(result.body)["code"] == "deadline_exceeded"
    assert result.elapsed < 2.0


# ----------------------------------------------------------------- Connect GET


def test_connect_get_json(server: RunningServer, http: str, tmp_path: Path) -> None:
    query = urllib.parse.urlencode(
        {"encoding": "json", "message": '{"name":"Buf"}', "connect": "v1"}
    )
    result = curl(server, f"/{SERVICE}/Get?{query}", http=http, tmp_path=tmp_path)
    assert result.status == 200
    assert result.headers["content-type"] == ["application/json"]
    assert json.loads(result.body) == {"greeting": "Hello, Buf!"}


def test_connect_get_proto_base64(plain_server: RunningServer, tmp_path: Path) -> None:
    message = base64.urlsafe_b64encode(test_pb2.GetRequest(name="B").SerializeToString())
    query = urllib.parse.urlencode(
        {"message": message.decode().rstrip("="), "base64": "1", "encoding": "proto"}
    )
    result = curl(plain_server, f"/{SERVICE}/Get?{query}", tmp_path=tmp_path)
    assert result.status == 200
    assert test_pb2.GetResponse.FromString(result.body).greeting == "Hello, B!"


def test_connect_get_not_allowed_on_side_effects(
    plain_server: RunningServer, tmp_path: Path
) -> None:
    query = urllib.parse.urlencode({"encoding": "json", "message": "{}"})
    result = curl(plain_server, f"/{SERVICE}/Echo?{query}", tmp_path=tmp_path)
    assert result.status == 405
    assert "POST" in result.headers["allow"][0]


# ----------------------------------------------------------------- Connect streaming


def test_connect_stream_envelopes(server: RunningServer, http: str, tmp_path: Path) -> None:
    request = {"count": 2, "responseTrailers": [{"name": "x-st", "value": "t"}]}
    result = curl(
        server,
        f"/{SERVICE}/Count",
        "-H",
        "Content-Type: application/connect+json",
        body=envelope(json.dumps(request).encode()),
        http=http,
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.headers["content-type"] == ["application/connect+json"]
    frames = parse_envelopes(result.body)
    assert [f for f, _ in frames] == [0, 0, 2]
    assert [json.loads(p) for _, p in frames[:2]] == [{"number": 1}, {"number": 2}]
    assert json.loads(frames[2][1]) == {"metadata": {"x-st": ["t"]}}


def test_connect_stream_error_end_stream(plain_server: RunningServer, tmp_path: Path) -> None:
    request = test_pb2.CountRequest(count=1, fail_code=8, fail_message="slow down")
    result = curl(
        plain_server,
        f"/{SERVICE}/Count",
        "-H",
        "Content-Type: application/connect+proto",
        body=envelope(request.SerializeToString()),
        tmp_path=tmp_path,
    )
    assert result.status == 200  # streaming errors never change the HTTP status
    frames = parse_envelopes(result.body)
    assert [f for f, _ in frames] == [0, 2]
    assert test_pb2.CountResponse.FromString(frames[0][1]).number == 1
    end = json.loads(frames[1][1])
    assert end["error"] == {"code": "resource_exhausted", "message": "slow down"}


# ----------------------------------------------------------------- gRPC


def _grpc_args(*extra: str) -> tuple[str, ...]:
    return ("-H", "content-type: application/grpc", "-H", "te: trailers", *extra)


def test_grpc_trailers(server: RunningServer, tmp_path: Path) -> None:
    request = test_pb2.EchoRequest(
        message="g", response_trailers=[test_pb2.Header(name="x-tr", value="v")]
    )
    result = curl(
        server,
        f"/{SERVICE}/Echo",
        *_grpc_args(),
        body=envelope(request.SerializeToString()),
        http="h2",
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.headers["content-type"][0].startswith("application/grpc")
    [(flags, payload)] = parse_envelopes(result.body)
    assert flags == 0
    assert test_pb2.EchoResponse.FromString(payload).message == "g"
    assert result.trailers["grpc-status"] == ["0"]
    assert result.trailers["x-tr"] == ["v"]
    assert "grpc-status" not in result.headers


def test_grpc_error_trailers(plain_server: RunningServer, tmp_path: Path) -> None:
    detail = any_pb2.Any()
    detail.Pack(test_pb2.Header(name="a", value="b"))
    message = "bad ☺ 100%"
    request = test_pb2.FailRequest(code=3, message=message, details=[detail])
    result = curl(
        plain_server,
        f"/{SERVICE}/Fail",
        *_grpc_args(),
        body=envelope(request.SerializeToString()),
        http="h2",
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.trailers["grpc-status"] == ["3"]
    assert result.trailers["grpc-message"] == ["bad %E2%98%BA 100%25"]
    raw = result.trailers["grpc-status-details-bin"][0]
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    assert (status.code, status.message) == (3, message)
    assert [d.type_url for d in status.details] == ["type.googleapis.com/testsvc.v1.Header"]


def test_grpc_timeout_enforced_by_server(plain_server: RunningServer, tmp_path: Path) -> None:
    result = curl(
        plain_server,
        f"/{SERVICE}/Sleep",
        *_grpc_args("-H", "grpc-timeout: 200m"),
        body=envelope(test_pb2.SleepRequest(ms=3000).SerializeToString()),
        http="h2",
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.trailers["grpc-status"] == ["4"]
    assert result.elapsed < 2.0


def test_grpc_over_http1_is_refused(plain_server: RunningServer, tmp_path: Path) -> None:
    result = curl(
        plain_server,
        f"/{SERVICE}/Echo",
        *_grpc_args(),
        body=envelope(b""),
        http="h1",
        tmp_path=tmp_path,
    )
    assert result.status != 200
    assert result.elapsed < 5.0


# ----------------------------------------------------------------- gRPC-Web


def test_grpc_web_text(server: RunningServer, http: str, tmp_path: Path) -> None:
    request = test_pb2.EchoRequest(
        message="web", response_trailers=[test_pb2.Header(name="x-tr", value="v")]
    )
    result = curl(
        server,
        f"/{SERVICE}/Echo",
        "-H",
        "content-type: application/grpc-web-text",
        "-H",
        "accept: application/grpc-web-text",
        body=base64.b64encode(envelope(request.SerializeToString())),
        http=http,
        tmp_path=tmp_path,
    )
    assert result.status == 200
    assert result.headers["content-type"][0].startswith("application/grpc-web-text")
    # The body may be several independently padded base64 chunks.
    text = result.body.decode()
    decoded = b""
    for i in range(0, len(text), 4):
        decoded += base64.b64decode(text[i : i + 4])
    frames = parse_envelopes(decoded)
    assert [f for f, _ in frames] == [0, 0x80]
    assert test_pb2.EchoResponse.FromString(frames[0][1]).message == "web"
    trailer_lines = frames[1][1].decode().split("\r\n")
    assert "grpc-status: 0" in trailer_lines
    assert "x-tr: v" in trailer_lines


def test_grpc_web_binary_error(plain_server: RunningServer, http: str, tmp_path: Path) -> None:
    request = test_pb2.FailRequest(code=10, message="aborted!")
    result = curl(
        plain_server,
        f"/{SERVICE}/Fail",
        "-H",
        "content-type: application/grpc-web+proto",
        body=envelope(request.SerializeToString()),
        http=http,
        tmp_path=tmp_path,
    )
    assert result.status == 200
    frames = parse_envelopes(result.body)
    if frames:  # trailer frame at the end of the body
        assert frames[-1][0] == 0x80
        lines = frames[-1][1].decode().split("\r\n")
        assert "grpc-status: 10" in lines
        assert "grpc-message: aborted!" in lines
    else:  # trailers-only: status in the headers, empty body
        assert result.headers["grpc-status"] == ["10"]
        assert result.headers["grpc-message"] == ["aborted!"]


# ----------------------------------------------------------------- robustness


@pytest.mark.parametrize("content_type", ["application/proto", "application/grpc"])
def test_h2_early_response_keeps_server_alive(
    fresh_server: RunningServer, content_type: str, tmp_path: Path
) -> None:
    """An over-limit h2c request is answered before its body is read; the rest of the
    body then arrives for a stream hypercorn already forgot. hypercorn 0.18 raises
    KeyError there (pgjones/hypercorn#329), and under the trio worker that exception
    ends the whole server process, not just the connection."""
    body = b"\0" * (5 * 1024 * 1024)
    for _ in range(5):
        argv = [require_curl(), "-sS", "--http2-prior-knowledge", "-o", "/dev/null"]
        argv += ["-H", f"content-type: {content_type}", "-H", "te: trailers"]
        argv += ["--data-binary", "@-", f"{fresh_server.url}/{SERVICE}/Echo"]
        subprocess.run(argv, input=body, capture_output=True, timeout=30, check=False)
        time.sleep(0.1)
        assert fresh_server.process.poll() is None, fresh_server.log_text()[-3000:]
    result = curl(
        fresh_server,
        f"/{SERVICE}/Get?encoding=json&message=%7B%7D",
        http="h2",
        tmp_path=tmp_path,
    )
    assert result.status == 200
