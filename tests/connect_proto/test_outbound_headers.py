"""Header blocks we send: our one-pass normalization and check refuse exactly what h2's
chain refuses and send what it sends (the same fields, the same never-indexed marks)."""

from __future__ import annotations

from typing import Any

import pytest
from h2.exceptions import ProtocolError
from h2.utilities import (
    HeaderValidationFlags,
    normalize_outbound_headers,
    utf8_encode_headers,
    validate_outbound_headers,
)
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from connect_proto._server import outbound_headers

NAMES = [
    b":status", b":path", b":method", b":authority", b":custom", b"content-type",
    b"grpc-status", b"te", b"TE", b"Content-Type", b" x-a ", b"connection", b"Keep-Alive",
    b"upgrade", b"authorization", b"Proxy-Authorization", b"cookie", b"", b" ", b"x-a",
]  # fmt: skip
VALUES = [b"", b"200", b"100", b"0", b"trailers", b" trailers ", b"gzip", b" v ", b"a" * 25,
          b"short", b"\tx"]  # fmt: skip
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]

header = st.tuples(
    st.one_of(st.sampled_from(NAMES), st.binary(max_size=5)),
    st.one_of(st.sampled_from(VALUES), st.binary(max_size=5)),
)
kinds = st.sampled_from([tuple, HeaderTuple, NeverIndexedHeaderTuple])
blocks = st.one_of(
    st.lists(st.tuples(header, kinds), max_size=7),
    st.builds(lambda extra: [(h, tuple) for h in RESPONSE] + extra,
              st.lists(st.tuples(header, kinds), max_size=5)),
)  # fmt: skip


def build(block: list[tuple[tuple[bytes, bytes], type]]) -> list[Any]:
    return [kind(*h) if kind is not tuple else tuple(h) for h, kind in block]


def h2_outcome(headers: list[Any], *, trailer: bool) -> Any:
    flags = HeaderValidationFlags(
        is_client=False, is_trailer=trailer, is_response_header=not trailer, is_push_promise=False
    )
    try:
        out = list(
            validate_outbound_headers(
                normalize_outbound_headers(utf8_encode_headers(headers), flags, False), flags
            )
        )
    except (ProtocolError, IndexError):  # IndexError: h2 on an empty name
        return ProtocolError
    return [(type(h), tuple(h)) for h in out]


def our_outcome(headers: list[Any], *, trailer: bool) -> Any:
    check = outbound_headers.trailer_headers if trailer else outbound_headers.response_headers
    try:
        out = check(headers)
    except ProtocolError:
        return ProtocolError
    return [(type(h), tuple(h)) for h in out]


@settings(max_examples=3000, deadline=None)
@given(blocks, st.booleans())
def test_refuses_and_sends_what_h2_does(block: Any, trailer: bool) -> None:
    headers = build(block)
    assert our_outcome(headers, trailer=trailer) == h2_outcome(headers, trailer=trailer)


@pytest.mark.parametrize(
    "block",
    [
        RESPONSE,
        [(":status", "200"), ("X-Str", " text ")],  # str fields, encoded as h2 does
        [*RESPONSE, (b"Connection", b"close"), (b"authorization", b"Bearer t")],
        [*RESPONSE, (b"cookie", b"a=1"), (b"cookie", b"b" * 30)],
        [*RESPONSE, (b"te", b"gzip")],
        [(b"content-type", b"x"), (b":status", b"200")],
        [(b":status", b"200"), (b":status", b"204")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b"grpc-status", b"0")],
    ],
)
@pytest.mark.parametrize("trailer", [False, True])
def test_known_blocks(block: list[Any], trailer: bool) -> None:
    assert our_outcome(block, trailer=trailer) == h2_outcome(block, trailer=trailer)
