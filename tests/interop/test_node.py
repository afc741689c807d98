"""Interop: npm ``@connectrpc/connect-node`` 2.x against our layer.

The client is tests/interop/client.mjs, a generic driver that loads the schema from a
FileDescriptorSet (no codegen) and runs a JSON list of calls; one node process runs
every call of one transport variant. TLS uses the trustme CA through
NODE_EXTRA_CA_CERTS, i.e. the way a deployment would add a private CA.

Needs ``npm ci --prefix tests/interop``; without node_modules the tests skip locally and
fail in CI.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import INTEROP, RunningServer, require_node
from testsvc.v1 import test_pb2


@dataclass(frozen=True)
class Variant:
    protocol: str  # connect | grpc | grpcweb
    http: str  # 1.1 | 2
    tls: bool
    binary: bool = True

    @property
    def id(self) -> str:
        codec = "proto" if self.binary else "json"
        return f"{self.protocol}-{codec}-{'tls' if self.tls else 'plain'}-h{self.http}"

    @property
    def server_protocol(self) -> str:
        return {"connect": "connect", "grpc": "grpc", "grpcweb": "grpc-web"}[self.protocol]


VARIANTS = [
    Variant("connect", "1.1", False),
    Variant("connect", "2", False),
    Variant("connect", "1.1", False, binary=False),
    Variant("connect", "2", False, binary=False),
    Variant("grpc", "2", False),
    Variant("grpcweb", "1.1", False),
    Variant("grpcweb", "2", False),
    Variant("connect", "1.1", True),
    Variant("connect", "2", True),
    Variant("connect", "2", True, binary=False),
    Variant("grpc", "2", True),
    Variant("grpcweb", "1.1", True),
    Variant("grpcweb", "2", True),
]

HEADER_DETAIL = test_pb2.Header(name="k", value="v")


def _calls(variant: Variant, base_url: str) -> list[dict[str, Any]]:
    common = {
        "protocol": variant.protocol,
        "baseUrl": base_url,
        "httpVersion": variant.http,
        "binary": variant.binary,
    }
    payload = base64.b64encode(bytes(range(256)) * 8).decode()
    echo_request = {
        "message": "héllo ☺",
        "payload": payload,
        "responseHeaders": [{"name": "x-resp", "value": "one"}],
        "responseTrailers": [{"name": "x-trail", "value": "done"}],
    }
    detail = {
        "@type": "type.googleapis.com/testsvc.v1.Header",
        "name": HEADER_DETAIL.name,
        "value": HEADER_DETAIL.value,
    }
    calls: list[dict[str, Any]] = [
        {"id": "echo", "method": "Echo", "request": echo_request, "headers": {"x-custom": "abc"}},
        {"id": "echo-gzip", "method": "Echo", "request": echo_request, "gzip": True},
        {
            "id": "count",
            "method": "Count",
            "request": {"count": 3, "responseTrailers": [{"name": "x-st", "value": "t"}]},
        },
        {
            "id": "count-fail",
            "method": "Count",
            "request": {"count": 2, "failCode": 9, "failMessage": "stop"},
        },
        {
            "id": "fail",
            "method": "Fail",
            "request": {
                "code": 5,
                "message": "gone ☺\nnext",
                "details": [detail],
                "responseHeaders": [{"name": "x-err-h", "value": "h"}],
                "responseTrailers": [{"name": "x-err-t", "value": "t"}],
            },
        },
        {"id": "deadline", "method": "Sleep", "request": {"ms": 3000}, "timeoutMs": 200},
        {"id": "propagate", "method": "Echo", "request": {}, "timeoutMs": 3000},
    ]
    if variant.protocol == "connect":
        calls.append({"id": "get", "method": "Get", "request": {"name": "Buf"}, "useGet": True})
    return [{**common, **c} for c in calls]


def run_node(spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    node = require_node()
    env = dict(os.environ, **(extra_env or {}))
    proc = subprocess.run(
        [node, str(INTEROP / "client.mjs")],
        input=json.dumps(spec).encode(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    results = json.loads(proc.stdout)["results"]
    return {r["id"]: r for r in results}


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.id)
def results(request: pytest.FixtureRequest, descriptor_set: Path) -> tuple[Variant, dict[str, Any]]:
    variant: Variant = request.param
    server: RunningServer = request.getfixturevalue("tls_server" if variant.tls else "plain_server")
    env = {"NODE_EXTRA_CA_CERTS": str(server.tls.ca_pem)} if server.tls else {}
    spec = {
        "descriptorSet": str(descriptor_set),
        "service": "testsvc.v1.TestService",
        "calls": _calls(variant, server.url),
    }
    return variant, run_node(spec, env)


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"], result.get("error")
    return result


def _seen(response: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for h in response.get("requestHeaders", []):
        out.setdefault(h["name"], []).append(h["value"])
    return out


def test_unary(results: tuple[Variant, dict[str, Any]]) -> None:
    variant, by_id = results
    result = _ok(by_id["echo"])
    response = result["responses"][0]
    assert response["message"] == "héllo ☺"
    assert base64.b64decode(response["payload"]) == bytes(range(256)) * 8
    assert response["protocol"] == variant.server_protocol
    assert _seen(response)["x-custom"] == ["abc"]
    assert result["headers"]["x-resp"] == ["one"]
    assert result["trailers"]["x-trail"] == ["done"]


def test_unary_gzip(results: tuple[Variant, dict[str, Any]]) -> None:
    variant, by_id = results
    result = _ok(by_id["echo-gzip"])
    assert base64.b64decode(result["responses"][0]["payload"]) == bytes(range(256)) * 8
    seen = _seen(result["responses"][0])
    if variant.protocol == "connect":
        assert seen["content-encoding"] == ["gzip"]
    else:
        assert seen["grpc-encoding"] == ["gzip"]


def test_server_stream(results: tuple[Variant, dict[str, Any]]) -> None:
    _, by_id = results
    result = _ok(by_id["count"])
    assert [r["number"] for r in result["responses"]] == [1, 2, 3]
    assert result["trailers"]["x-st"] == ["t"]


def test_server_stream_error(results: tuple[Variant, dict[str, Any]]) -> None:
    _, by_id = results
    result = by_id["count-fail"]
    assert not result["ok"]
    assert [r["number"] for r in result["responses"]] == [1, 2]
    assert result["error"]["codeName"] == "failed_precondition"
    assert result["error"]["rawMessage"] == "stop"


def test_error_with_details(results: tuple[Variant, dict[str, Any]]) -> None:
    _, by_id = results
    result = by_id["fail"]
    assert not result["ok"]
    error = result["error"]
    assert error["codeName"] == "not_found"
    assert error["rawMessage"] == "gone ☺\nnext"
    assert error["details"] == [
        {
            "type": "testsvc.v1.Header",
            "value": base64.b64encode(HEADER_DETAIL.SerializeToString()).decode(),
        }
    ]
    # connect-node puts headers and trailers of a failed call into error.metadata.
    assert error["metadata"]["x-err-h"] == ["h"]
    assert error["metadata"]["x-err-t"] == ["t"]


def test_deadline(results: tuple[Variant, dict[str, Any]]) -> None:
    _, by_id = results
    assert by_id["deadline"]["error"]["codeName"] == "deadline_exceeded"
    timeout = _ok(by_id["propagate"])["responses"][0]["timeoutSeconds"]
    assert 2.0 < timeout <= 3.0


@pytest.mark.parametrize(
    "results", [v for v in VARIANTS if v.protocol == "connect"], ids=lambda v: v.id, indirect=True
)
def test_get(results: tuple[Variant, dict[str, Any]]) -> None:
    """GET exists only in the Connect protocol."""
    _, by_id = results
    result = _ok(by_id["get"])
    # Get is NO_SIDE_EFFECTS in the descriptor set, so connect-es sends a real GET
    # (query ?message=...&encoding=...); a server without GET support answers 405.
    assert result["responses"] == [{"greeting": "Hello, Buf!"}]
