"""Received header blocks: our one-pass check refuses exactly what h2's chain refuses and
returns what it returns; on a socket, a refused block ends the connection with
PROTOCOL_ERROR and split cookies reach the app joined."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, normalize_inbound_headers, validate_headers
from h2_peer import OURS, Peer, Server, of_type, unary_ok, with_lifespan
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect_proto._server import inbound_headers
from connect_proto._server.serve import make_config

NAMES = [
    b":method", b":scheme", b":path", b":authority", b":status", b":protocol", b":custom",
    b"content-type", b"te", b"host", b"cookie", b"user-agent", b"grpc-timeout",
    b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection",
    b"Content-Type", b"x y", b"x:y", b"", b"\x7f", b"caf\xc3\xa9", b":", b"::path",
]  # fmt: skip
VALUES = [
    b"", b"GET", b"POST", b"CONNECT", b"http", b"/", b"/a", b"trailers", b"TRAILERS",
    b"gzip", b"a", b"x", b"y", b" a", b"a ", b"\ta", b"a\t", b"a\rb", b"a\nb", b"\x00",
    b"websocket", b"a=1", b"caf\xc3\xa9",
]  # fmt: skip
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b":authority", b"x")]

any_header = st.tuples(
    st.one_of(st.sampled_from(NAMES), st.binary(max_size=6)),
    st.one_of(st.sampled_from(VALUES), st.binary(max_size=6)),
)
# Valid on their own: faults come from how they combine (two hosts, a host that differs
# from :authority, a cookie joined with an empty one).
plain_header = st.tuples(
    st.sampled_from([b"host", b"cookie", b"te", b"x-a", b":path", b":authority"]),
    st.sampled_from([b"x", b"y", b"", b"trailers", b"a=1", b"/"]),
)
header = st.one_of(plain_header, any_header)
# Mostly blocks that start as a valid request, so that later faults are reached.
blocks = st.one_of(
    st.lists(header, max_size=8),
    st.builds(lambda extra, cut: (REQUEST + extra)[cut:], st.lists(header, max_size=6),
              st.integers(0, 4)),
    st.builds(lambda extra: REQUEST + extra, st.lists(plain_header, max_size=4)),
)  # fmt: skip


def h2_outcome(block: list[HeaderTuple], *, trailer: bool) -> Any:
    flags = HeaderValidationFlags(
        is_client=False, is_trailer=trailer, is_response_header=False, is_push_promise=False
    )
    try:
        headers = list(validate_headers(normalize_inbound_headers(block, flags), flags))
    except ProtocolError:
        return ProtocolError
    return [(type(h), tuple(h)) for h in headers]


def our_outcome(block: list[HeaderTuple], *, trailer: bool) -> Any:
    check = inbound_headers.trailer_headers if trailer else inbound_headers.request_headers
    try:
        headers = check(block)
    except ProtocolError:
        return ProtocolError
    return [(type(h), tuple(h)) for h in headers]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks, st.booleans())
def test_refuses_and_returns_what_h2_does(raw: list[tuple[bytes, bytes]], trailer: bool) -> None:
    block = [HeaderTuple(name, value) for name, value in raw]
    assert our_outcome(block, trailer=trailer) == h2_outcome(block, trailer=trailer)


@pytest.mark.parametrize(
    "block",
    [
        REQUEST,
        [*REQUEST, (b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2")],
        [*REQUEST, (b"cookie", b"a=1"), (b"cookie", b"")],  # joined: "a=1; " ends in a space
        [*REQUEST, (b"Content-Type", b"x")],
        [*REQUEST, (b"host", b"y")],  # does not match :authority
        [*REQUEST, (b"host", b"x"), (b"host", b"x")],
        [*REQUEST, (b"te", b"gzip")],
        [*REQUEST, (b"connection", b"close")],
        [*REQUEST, (b"x", b"a\r\nb")],
        [*REQUEST, (b"a", b"1"), (b":path", b"/b")],
        [(b":method", b"CONNECT"), (b":authority", b"x")],
        [(b":method", b"CONNECT"), (b":authority", b"x"), (b":path", b"/")],
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"x")],
        [(b":method", b"POST"), (b":protocol", b"websocket"), *REQUEST[1:]],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"x")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],  # no authority
        [(b":status", b"200"), *REQUEST],
        [(b"", b"x"), *REQUEST],
    ],
)
@pytest.mark.parametrize("trailer", [False, True])
def test_known_blocks(block: list[tuple[bytes, bytes]], trailer: bool) -> None:
    headers = [HeaderTuple(name, value) for name, value in block]
    assert our_outcome(headers, trailer=trailer) == h2_outcome(headers, trailer=trailer)


def test_split_cookies_are_joined_last_and_never_indexed() -> None:
    block = [HeaderTuple(*h) for h in [*REQUEST, (b"cookie", b"a=1"), (b"x", b"1"),
                                       (b"cookie", b"b=2")]]  # fmt: skip
    out = inbound_headers.request_headers(block)
    assert out[:-1] == [*block[:4], block[5]]
    assert out[-1] == (b"cookie", b"a=1; b=2")
    assert isinstance(out[-1], NeverIndexedHeaderTuple)


def test_the_name_cache_is_bounded() -> None:
    for i in range(2 * inbound_headers._VALID_NAMES_LIMIT):
        block = [*REQUEST, (f"x-{i}".encode(), b"1")]
        inbound_headers.request_headers([HeaderTuple(*h) for h in block])
    assert len(inbound_headers._VALID_NAMES) == inbound_headers._VALID_NAMES_LIMIT


# -- over a socket ----------------------------------------------------------------------


def cookie_echo() -> Any:
    async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        cookie = dict(scope["headers"]).get(b"cookie", b"-")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": cookie})

    return with_lifespan(answer)


def raw_client(port: int) -> Any:
    """A peer whose h2 sends what we give it, unchecked."""

    async def connect() -> Peer:
        peer = await Peer.connect(port)
        peer.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
            )
        )
        peer.h2.initiate_connection()
        return peer

    return connect()


async def test_a_refused_block_ends_the_connection_and_others_are_served(
    nursery: trio.Nursery,
) -> None:
    server = await Server(OURS, cookie_echo(), make_config("127.0.0.1", 0)).start(nursery)
    peer = await raw_client(server.port)
    sid = peer.h2.get_next_available_stream_id()
    peer.h2.send_headers(sid, [*REQUEST, (b"Bad-Name", b"1")], end_stream=True)
    await peer.flush()
    events = await peer.until(lambda seen: of_type(seen, h2.events.ConnectionTerminated))
    (ended,) = of_type(events, h2.events.ConnectionTerminated)
    assert ended.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert not of_type(events, h2.events.ResponseReceived)
    await peer.aclose()
    assert await unary_ok(server.port)  # a new connection is served (any path: 200)
    server.check()


async def test_split_cookies_reach_the_app_joined(nursery: trio.Nursery) -> None:
    server = await Server(OURS, cookie_echo(), make_config("127.0.0.1", 0)).start(nursery)
    peer = await raw_client(server.port)
    sid = peer.h2.get_next_available_stream_id()
    block = [*REQUEST, (b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2")]
    peer.h2.send_headers(sid, block, end_stream=True)
    await peer.flush()
    events = await peer.until(lambda seen: of_type(seen, h2.events.StreamEnded))
    assert b"".join(e.data for e in of_type(events, h2.events.DataReceived)) == b"a=1; b=2"
    await peer.aclose()
