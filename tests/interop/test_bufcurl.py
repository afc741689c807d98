"""Interop: ``buf curl`` (npm ``@bufbuild/buf`` 1.75, connect-go inside) against our layer.

``--schema proto`` compiles the project's .proto files (no reflection). Output is JSON
on stdout; ``-v`` prints request/response headers and trailers on stderr; an RPC error
exits with the code number times 8 and prints the Connect error JSON on stderr.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from servers import PROTO, ROOT, RunningServer, require_buf

SERVICE = "testsvc.v1.TestService"


@dataclass(frozen=True)
class Variant:
    protocol: str  # connect | grpc | grpcweb
    h2: bool
    tls: bool

    @property
    def id(self) -> str:
        http = "h2" if self.h2 or self.tls else "h1"
        return f"{self.protocol}-{'tls' if self.tls else 'plain'}-{http}"

    @property
    def server_protocol(self) -> str:
        return {"connect": "connect", "grpc": "grpc", "grpcweb": "grpc-web"}[self.protocol]


VARIANTS = [
    Variant("connect", False, False),
    Variant("connect", True, False),
    Variant("grpc", True, False),
    Variant("grpcweb", False, False),
    Variant("grpcweb", True, False),
    # Over https buf negotiates h2 through ALPN.
    Variant("connect", True, True),
    Variant("grpc", True, True),
    Variant("grpcweb", True, True),
]


@dataclass
class BufResult:
    returncode: int
    messages: list[dict[str, Any]]
    stderr: str
    headers: dict[str, list[str]]
    trailers: dict[str, list[str]]

    def error(self) -> dict[str, Any]:
        """The Connect error JSON that ends stderr on failure."""
        starts = [m.start() for m in re.finditer(r"^\{$", self.stderr, re.MULTILINE)]
        value, _ = json.JSONDecoder().raw_decode(self.stderr, starts[-1])
        return value


_HEADER = re.compile(r"^buf: < \(#\d+\) (?:\[\*\] )?([A-Za-z0-9-]+): (.*)$")
_BLANK = re.compile(r"^buf: < \(#\d+\)\s*$")


def _parse_json_stream(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return out
        value, index = decoder.raw_decode(text, index)
        out.append(value)


def buf_curl(
    server: RunningServer, variant: Variant, method: str, data: dict[str, Any], *extra: str
) -> BufResult:
    args = [
        require_buf(),
        "curl",
        "--schema",
        str(PROTO),
        "-v",
        "--protocol",
        variant.protocol,
        "-d",
        json.dumps(data),
        *extra,
    ]
    if variant.h2 and not variant.tls:
        args.append("--http2-prior-knowledge")
    if server.tls:
        args += ["--cacert", str(server.tls.ca_pem)]
    args.append(f"{server.url}/{SERVICE}/{method}")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    headers: dict[str, list[str]] = {}
    trailers: dict[str, list[str]] = {}
    blocks = 0
    for line in proc.stderr.splitlines():
        if _BLANK.match(line):
            blocks += 1
            continue
        m = _HEADER.match(line)
        if m:
            target = headers if blocks == 0 else trailers
            target.setdefault(m.group(1).lower(), []).append(m.group(2))
    return BufResult(
        proc.returncode, _parse_json_stream(proc.stdout), proc.stderr, headers, trailers
    )


@pytest.fixture(params=VARIANTS, ids=lambda v: v.id)
def variant(request: pytest.FixtureRequest) -> Variant:
    return request.param


@pytest.fixture
def server(variant: Variant, request: pytest.FixtureRequest) -> RunningServer:
    return request.getfixturevalue("tls_server" if variant.tls else "plain_server")


def test_unary(server: RunningServer, variant: Variant) -> None:
    result = buf_curl(
        server,
        variant,
        "Echo",
        {
            "message": "hi ☺",
            "responseHeaders": [{"name": "x-resp", "value": "h"}],
            "responseTrailers": [{"name": "x-trail", "value": "t"}],
        },
        "-H",
        "x-custom: abc",
    )
    assert result.returncode == 0, result.stderr
    [response] = result.messages
    assert response["message"] == "hi ☺"
    assert response["protocol"] == variant.server_protocol
    assert {"name": "x-custom", "value": "abc"} in response["requestHeaders"]
    assert result.headers["x-resp"] == ["h"]
    if variant.protocol == "connect":
        # Connect unary trailers travel as prefixed headers; -v shows them raw.
        assert result.headers["trailer-x-trail"] == ["t"]
    elif variant.protocol == "grpc":
        assert result.trailers["x-trail"] == ["t"]
        assert result.trailers["grpc-status"] == ["0"]
    # buf -v does not print the trailers of a unary gRPC-Web call.


def test_server_stream(server: RunningServer, variant: Variant) -> None:
    result = buf_curl(
        server,
        variant,
        "Count",
        {"count": 4, "responseTrailers": [{"name": "x-st", "value": "t"}]},
    )
    assert result.returncode == 0, result.stderr
    assert [m["number"] for m in result.messages] == [1, 2, 3, 4]
    # Stream trailers: HTTP/2 trailers (gRPC), the gRPC-Web trailer frame or the
    # Connect end-stream message; buf -v prints all of them after the body.
    assert result.trailers["x-st"] == ["t"]


def test_server_stream_error_exit_code(server: RunningServer, variant: Variant) -> None:
    result = buf_curl(
        server, variant, "Count", {"count": 2, "failCode": 14, "failMessage": "later"}
    )
    assert result.returncode == 14 * 8, result.stderr
    assert [m["number"] for m in result.messages] == [1, 2]
    assert result.error() == {"code": "unavailable", "message": "later"}


def test_unary_error_exit_code(server: RunningServer, variant: Variant) -> None:
    result = buf_curl(
        server,
        variant,
        "Fail",
        {
            "code": 7,
            "message": "no way",
            "details": [{"@type": "type.googleapis.com/testsvc.v1.Header", "name": "a"}],
        },
    )
    assert result.returncode == 7 * 8, result.stderr
    error = result.error()
    assert error["code"] == "permission_denied"
    assert error["message"] == "no way"
    # buf prints each detail's type and base64 value: Header(name="a") = 0a 01 61.
    assert error["details"] == [{"type": "testsvc.v1.Header", "value": "CgFh"}]


def test_gzip_response(server: RunningServer, variant: Variant) -> None:
    """buf advertises gzip; a large response comes back compressed and intact."""
    result = buf_curl(server, variant, "Echo", {"message": "x" * 5000})
    assert result.returncode == 0, result.stderr
    assert result.messages[0]["message"] == "x" * 5000
    encoding = {"connect": "content-encoding", "grpc": "grpc-encoding", "grpcweb": "grpc-encoding"}
    assert result.headers[encoding[variant.protocol]] == ["gzip"]
