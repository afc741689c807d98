"""Bearer-token authentication: token file, each outcome on each protocol, over a socket."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import httpx
import pytest
import trio
from asgi_driver import Response, call_app
from proto_calls import ALL, SVC, Case, call, request_for
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._client import ConnectClient
from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._extras import auth
from connect_proto._extras.auth import BearerAuth, TokenFileError, TokenGrant, parse_token_file
from connect_proto._hooks import CallOutcome
from connect_proto._server.serve import make_config, serve
from connect_proto._service import RpcRoute

TOKENS = f"""
tokens:
  - name: full
    token: full-token
    allow: ["*"]
  - name: echo-only
    sha256: "{hashlib.sha256(b"echo-token").hexdigest()}"
    allow: ["{SVC}/Echo", "{SVC}/Get"]
"""


class Principals:
    """An observer recording who each call was made by."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str]] = []

    def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        pass

    def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        self.seen.append((route.method_name, ctx.principal, outcome.code_name))


async def plain_ok(scope: dict, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def make_app(observer: Principals | None = None) -> ConnectApp:
    return ConnectApp(
        [(TEST_SERVICE, TestServiceImpl())],
        interceptors=[BearerAuth(parse_token_file(TOKENS), open_paths=[f"{SVC}/Get"])],
        observers=[observer] if observer else [],
        http_routes={"/healthz": plain_ok},
    )


# Token file ---------------------------------------------------------------------------------


def test_token_file_yaml_json_and_sha256(tmp_path: Path) -> None:
    grants = parse_token_file(TOKENS)
    assert [g.name for g in grants] == ["full", "echo-only"]
    assert grants[1].digest == hashlib.sha256(b"echo-token").digest()
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"name": "a", "token": "t", "allow": ["*"]}]}))
    assert auth.load_token_file(path) == [TokenGrant.from_token("a", "t", ["*"])]


@pytest.mark.parametrize(
    "text",
    [
        "just a string",
        "tokens: {}",
        "tokens: [{name: a, allow: ['*']}]",  # neither token nor sha256
        "tokens: [{name: a, token: t, sha256: " + "0" * 64 + ", allow: ['*']}]",  # both
        "tokens: [{name: a, sha256: abc, allow: ['*']}]",  # not 64 hex digits
        "tokens: [{name: a, token: t}]",  # no allow
        "tokens: [{name: a, token: t, allow: '*'}]",  # allow not a list
        "tokens: [{token: t, allow: ['*']}]",  # no name
        "tokens: [{name: a, token: t, allow: ['*']}, {name: a, token: u, allow: ['*']}]",
        "tokens: [{name: a, token: '', allow: ['*']}]",
        "{",
    ],
)
def test_token_file_errors(text: str) -> None:
    with pytest.raises(TokenFileError):
        parse_token_file(text)


def test_missing_token_file_is_a_token_file_error(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="nope"):
        BearerAuth.from_file(tmp_path / "nope.yaml")


def test_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first grant still compares all the others."""
    grants = [TokenGrant.from_token(f"g{i}", f"t{i}", ["*"]) for i in range(5)]
    checker = BearerAuth(grants)
    calls: list[int] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert checker.authenticate("t0") == 0
    assert checker.authenticate("nope") is None
    assert calls == [32] * 10  # digests only: the tokens' lengths never show


def test_bearer_header_parsing() -> None:
    from connect_proto._headers import Headers

    def token(value: str | None) -> str | None:
        headers = Headers([] if value is None else [("authorization", value)])
        return auth.bearer_token(RequestContext("/a/b", "grpc", headers))

    assert token("Bearer abc") == "abc"
    assert token("bearer   abc ") == "abc"
    assert token(None) is None
    assert token("Basic abc") is None
    assert token("Bearer") is None
    assert token("Bearer ") is None


# Each outcome on each protocol (in-process) --------------------------------------------------


OUTCOMES = [
    ("no-header", (), Code.UNAUTHENTICATED),
    ("not-bearer", (("authorization", "Basic ZnVsbA=="),), Code.UNAUTHENTICATED),
    ("unknown", (("authorization", "Bearer wrong"),), Code.UNAUTHENTICATED),
    ("prefix-of-known", (("authorization", "Bearer full"),), Code.UNAUTHENTICATED),
    ("ok", (("authorization", "Bearer full-token"),), None),
]


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: o[0])
async def test_auth_outcomes_per_protocol(case: Case, outcome: tuple) -> None:
    _, headers, expected = outcome
    path, message = request_for(case)
    status, _ = await call(make_app(), case, path, message, headers)
    assert status.code is expected, status
    if expected is not None:
        assert status.messages == 0  # refused before the handler ran


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_permission_denied_per_protocol(case: Case) -> None:
    observer = Principals()
    app = make_app(observer)
    # echo-only may call Echo, not Count; Count streams, so use it for streaming cases,
    # and Sleep (also not allowed) for the unary ones.
    if case.streaming_ok:
        path, message = f"{SVC}/Count", test_pb2.CountRequest(count=1)
    else:
        path, message = f"{SVC}/Sleep", test_pb2.SleepRequest(ms=1)
    status, _ = await call(app, case, path, message, [("authorization", "Bearer echo-token")])
    assert status.code is Code.PERMISSION_DENIED
    assert "echo-only" in status.message
    assert observer.seen == [(path.rsplit("/", 1)[1], "echo-only", "permission_denied")]
    if case.unary_ok:
        status, _ = await call(
            app,
            case,
            f"{SVC}/Echo",
            test_pb2.EchoRequest(),
            [("authorization", "Bearer echo-token")],
        )
        assert status.code is None
        assert observer.seen[-1] == ("Echo", "echo-only", "ok")


async def test_unauthenticated_is_http_401_for_connect_unary() -> None:
    response = await call_app(
        make_app(), path=f"{SVC}/Echo", headers=[("content-type", "application/json")], body=b"{}"
    )
    assert response.status == 401
    assert response.json() == {"code": "unauthenticated", "message": "missing bearer token"}


async def test_open_paths_and_http_routes_need_no_token() -> None:
    app = make_app()
    response = await call_app(
        app, path=f"{SVC}/Get", headers=[("content-type", "application/json")], body=b"{}"
    )
    assert response.status == 200, response.body
    response = await call_app(app, path="/healthz", method="GET")
    assert response.body == b"ok"


async def test_default_open_paths_cover_health_and_reflection() -> None:
    checker = BearerAuth([])
    routes = {
        p: None
        for p in (
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            f"{SVC}/Echo",
        )
    }
    checker.bind(routes)  # type: ignore[arg-type]
    assert f"{SVC}/Echo" not in checker._open
    assert len(checker._open) == 3


async def test_unauthenticated_http1_request_body_is_drained() -> None:
    """Refused before the body is read: on HTTP/1.1 the connection stays reusable."""
    response = await call_app(
        make_app(),
        path=f"{SVC}/Echo",
        headers=[("content-type", "application/proto"), ("content-length", "4")],
        body=[b"\x0a\x02", b"hi"],
        http_version="1.1",
    )
    assert response.status == 401
    assert response.header("connection") is None


# Over a socket ----------------------------------------------------------------------------------


def _grpc_sleep(port: int, token: str | None) -> Code | None:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        sleep = channel.unary_unary(
            f"{SVC}/Sleep",
            request_serializer=test_pb2.SleepRequest.SerializeToString,
            response_deserializer=test_pb2.SleepResponse.FromString,
        )
        metadata = [] if token is None else [("authorization", f"Bearer {token}")]
        try:
            sleep(test_pb2.SleepRequest(ms=1), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return Code.from_grpc(exc.code().value[0])
        return None


SOCKET_CASES = [c for c in ALL if c.name != "grpc"]  # httpx cannot read HTTP/2 trailers
SOCKET_OUTCOMES = [
    (None, Code.UNAUTHENTICATED),
    ("wrong", Code.UNAUTHENTICATED),
    ("echo-token", Code.PERMISSION_DENIED),  # may call Echo and Get only
    ("full-token", None),
]


async def test_auth_over_socket_all_protocols(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve, make_app(), make_config("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
    for http2 in (False, True):
        async with httpx.AsyncClient(base_url=url, http1=not http2, http2=http2) as raw:
            for case in SOCKET_CASES:
                for token, expected in SOCKET_OUTCOMES:
                    if case.unary_ok:
                        path, message = f"{SVC}/Sleep", test_pb2.SleepRequest(ms=1)
                    else:
                        path, message = f"{SVC}/Count", test_pb2.CountRequest(count=2)
                    headers = dict(case.headers())
                    if token is not None:
                        headers["authorization"] = f"Bearer {token}"
                    reply = await raw.post(path, content=case.body(message), headers=headers)
                    assert reply.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                    got = case.status(
                        Response(status=reply.status_code, body=reply.content, complete=True)
                    )
                    assert got.code is expected, (http2, case.name, token, got)
            assert (await raw.get("/healthz")).text == "ok"
    # The Connect client sees the codes as RpcError too.
    async with ConnectClient(url) as client:
        with pytest.raises(RpcError) as info:
            await client.unary(f"{SVC}/Echo", test_pb2.EchoRequest(), test_pb2.EchoResponse)
        assert info.value.code is Code.UNAUTHENTICATED
        with pytest.raises(RpcError) as info:
            async for _ in client.server_stream(
                f"{SVC}/Count",
                test_pb2.CountRequest(count=1),
                test_pb2.CountResponse,
                headers={"authorization": "Bearer echo-token"},
            ):
                pass
        assert info.value.code is Code.PERMISSION_DENIED
    # gRPC through grpcio (the C-core stack), which reads the trailers.
    for token, expected in SOCKET_OUTCOMES:
        assert await trio.to_thread.run_sync(_grpc_sleep, port, token) is expected, token
    nursery.cancel_scope.cancel()


async def test_refusal_before_a_large_h2_body_keeps_the_server_alive(nursery: trio.Nursery) -> None:
    """Answered before the body is read, the rest of the body arrives for a stream
    hypercorn forgot (pgjones/hypercorn#329 used to end the server); the connection's
    flow-control window must survive too, so the same connection serves on."""
    port = await nursery.start(serve, make_app(), make_config("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}{SVC}/Echo"
    big = b"\0" * (3 * 1024 * 1024)  # well past the 64 KiB initial windows
    async with httpx.AsyncClient(http1=False, http2=True, timeout=20) as client:
        for _ in range(4):  # 12 MiB in total: a leaked window would stall here
            reply = await client.post(
                url, content=big, headers={"content-type": "application/proto"}
            )
            assert (reply.status_code, reply.http_version) == (401, "HTTP/2")
        reply = await client.post(
            url,
            content=b"",
            headers={"content-type": "application/proto", "authorization": "Bearer full-token"},
        )
        assert reply.status_code == 200
    nursery.cancel_scope.cancel()
