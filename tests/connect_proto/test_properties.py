"""Property tests: whatever arrives, the app answers with a well-formed response.

The in-process driver validates the ASGI event sequence (one start, bodies, trailers
only when announced, nothing after completion), so "no exception escaped and the
response completed" is the property. Example counts stay modest to keep the suite fast.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from asgi_driver import Response, call_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._wire.codec import CODECS
from connect_proto._wire.envelope import EnvelopeDecoder, encode_envelope
from connect_proto._wire.grpc import Base64Decoder, percent_decode, percent_encode


class BoundedImpl(TestServiceImpl):
    """Fuzzed requests may ask for huge counts or sleeps; cap them so examples stay fast."""

    async def count(self, request: Any, ctx: Any, send: Any) -> None:
        request.count = min(request.count, 5)
        request.delay_ms = min(request.delay_ms, 2)
        await super().count(request, ctx, send)

    async def sleep(self, request: Any, ctx: Any) -> Any:
        request.ms = min(request.ms, 2)
        return await super().sleep(request, ctx)


APP = ConnectApp([(TEST_SERVICE, BoundedImpl())], max_message_size=4096)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

PATHS = st.sampled_from(
    [
        "/testsvc.v1.TestService/Echo",
        "/testsvc.v1.TestService/Count",
        "/testsvc.v1.TestService/Get",
        "/testsvc.v1.TestService/Sum",
        "/testsvc.v1.TestService/Chat",
        "/testsvc.v1.TestService/Sleep",
        "/testsvc.v1.TestService/Nope",
        "/",
        "",
    ]
) | st.text(max_size=30)
CONTENT_TYPES = st.sampled_from(
    [
        "application/proto",
        "application/json",
        "application/json; charset=utf-8",
        "application/connect+proto",
        "application/connect+json",
        "application/grpc",
        "application/grpc+proto",
        "application/grpc+json",
        "application/grpc-web",
        "application/grpc-web+json",
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
        "image/jpeg",
        "",
    ]
) | st.text(max_size=20)
HEADER_NAMES = st.sampled_from(
    [
        "content-encoding",
        "accept-encoding",
        "connect-content-encoding",
        "connect-accept-encoding",
        "connect-timeout-ms",
        "connect-protocol-version",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "te",
        "content-length",
        "x-custom-bin",
    ]
)
HEADER_VALUES = st.sampled_from(
    ["gzip", "identity", "foo", "1", "2", "trailers", "50m", "0", "", "10"]
) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4)
BODY_CHUNKS = st.lists(st.binary(max_size=64), min_size=1, max_size=4)


def _envelopes(payloads: list[bytes], flags: list[int]) -> bytes:
    return b"".join(encode_envelope(p, f) for p, f in zip(payloads, flags, strict=False))


ENVELOPED = st.builds(
    _envelopes,
    st.lists(st.binary(max_size=32), max_size=3),
    st.lists(st.sampled_from([0, 1, 2, 0x80, 0xFF]), min_size=3, max_size=3),
)


def well_formed(r: Response) -> None:
    assert r.complete
    assert 200 <= r.status <= 599
    content_type = r.header("content-type") or ""
    if r.status != 200 and content_type == "application/json":
        body = json.loads(r.body)
        assert isinstance(body["code"], str) and body["code"] != "ok"
    if r.wants_trailers:
        assert r.trailer("grpc-status") is not None
    if content_type.startswith("application/connect+") and r.status == 200:
        frames = r.envelopes()
        assert frames and frames[-1][0] == 2
        json.loads(frames[-1][1])


async def drive(**kwargs: object) -> Response:
    return await call_app(APP, hang_limit=10, **kwargs)  # type: ignore[arg-type]


@SETTINGS
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS"]),
    path=PATHS,
    content_type=CONTENT_TYPES,
    headers=HEADERS,
    body=BODY_CHUNKS,
    http_version=st.sampled_from(["1.1", "2"]),
)
def test_arbitrary_requests_get_well_formed_answers(
    method: str,
    path: str,
    content_type: str,
    headers: list[tuple[str, str]],
    body: list[bytes],
    http_version: str,
) -> None:
    all_headers = [("content-type", content_type), *headers]
    r = trio.run(
        lambda: drive(
            method=method, path=path, headers=all_headers, body=body, http_version=http_version
        )
    )
    well_formed(r)


@SETTINGS
@given(
    path=st.sampled_from(
        [
            "/testsvc.v1.TestService/Echo",
            "/testsvc.v1.TestService/Count",
            "/testsvc.v1.TestService/Sum",
        ]
    ),
    content_type=st.sampled_from(
        [
            "application/connect+proto",
            "application/connect+json",
            "application/grpc",
            "application/grpc-web",
        ]
    ),
    headers=HEADERS,
    body=ENVELOPED,
    split=st.integers(min_value=0, max_value=200),
)
def test_arbitrary_envelopes_get_well_formed_answers(
    path: str, content_type: str, headers: list[tuple[str, str]], body: bytes, split: int
) -> None:
    all_headers = [("content-type", content_type), ("te", "trailers"), *headers]
    r = trio.run(lambda: drive(path=path, headers=all_headers, body=[body[:split], body[split:]]))
    well_formed(r)


@SETTINGS
@given(query=st.binary(max_size=80), headers=HEADERS)
def test_arbitrary_get_queries(query: bytes, headers: list[tuple[str, str]]) -> None:
    r = trio.run(
        lambda: drive(
            method="GET", path="/testsvc.v1.TestService/Get", query_string=query, headers=headers
        )
    )
    well_formed(r)


@SETTINGS
@given(
    name=st.text(max_size=20),
    encoding=st.sampled_from(["json", "proto", "", "xml"]),
    b64=st.sampled_from(["", "1", "0"]),
)
def test_structured_get_queries(name: str, encoding: str, b64: str) -> None:
    from urllib.parse import urlencode

    query = urlencode({"encoding": encoding, "message": json.dumps({"name": name}), "base64": b64})
    r = trio.run(
        lambda: drive(method="GET", path="/testsvc.v1.TestService/Get", query_string=query.encode())
    )
    well_formed(r)
    if encoding == "json" and b64 != "1":
        assert r.json() == {"greeting": f"Hello, {name}!"}


# Sans-IO properties --------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=50), max_size=5),
    cuts=st.lists(st.integers(0, 300), max_size=5),
)
def test_envelope_decoder_split_invariance(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_envelope(p) for p in payloads)
    decoder = EnvelopeDecoder(64)
    got = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = max(start, cut)
    decoder.close()
    assert [e.payload for e in got] == payloads


@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_grpc_message_round_trip(text: str) -> None:
    encoded = percent_encode(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert percent_decode(encoded) == text.encode("utf-8", "replace").decode("utf-8", "replace")


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_grpc_message_decoder_never_fails(text: str) -> None:
    percent_decode(text)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_base64_decoder_arbitrary_input_raises_only_rpc_error(data: bytes) -> None:
    from connect_proto import RpcError

    decoder = Base64Decoder()
    try:
        decoder.feed(data)
        decoder.close()
    except RpcError:
        pass


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_codecs_raise_only_rpc_error(data: bytes) -> None:
    from testsvc.v1 import test_pb2

    from connect_proto import RpcError

    for codec in CODECS.values():
        try:
            codec.decode(data, test_pb2.EchoRequest)
        except RpcError:
            pass
