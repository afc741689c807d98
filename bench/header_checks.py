"""CPU to normalize and check one request's header block and one response's headers and
trailers: h2's generator chains (``normalize_inbound_headers`` + ``validate_headers``,
``normalize_outbound_headers`` + ``validate_outbound_headers``) against connect_proto's
one-pass ``inbound_headers`` and ``outbound_headers``, on the blocks a grpcio client and
our gRPC answer carry.

    python bench/header_checks.py
"""

from __future__ import annotations

import timeit

from h2.utilities import (
    HeaderValidationFlags,
    normalize_inbound_headers,
    normalize_outbound_headers,
    utf8_encode_headers,
    validate_headers,
    validate_outbound_headers,
)
from hpack import HeaderTuple

from connect_proto._server import inbound_headers, outbound_headers

ROUNDS = 20_000
REQUEST = [
    HeaderTuple(name, value)
    for name, value in [
        (b":scheme", b"http"),
        (b":method", b"POST"),
        (b":authority", b"127.0.0.1:8091"),
        (b":path", b"/flyteidl2.actions.ActionsService/Enqueue"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"user-agent", b"grpc-python-asyncio/1.76.0 grpc-c/51.0.0 (linux; chttp2)"),
        (b"grpc-accept-encoding", b"identity, deflate, gzip"),
        (b"grpc-timeout", b"29999982u"),
    ]
]
RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"gzip"),
    (b"x-request-id", b"cf831da5307ea7c9c468f0047f065cdc"),
    (b"date", b"Thu, 03 Dec 2026 12:01:38 GMT"),
    (b"server", b"hypercorn-h2"),
]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]

_REQUEST_FLAGS = HeaderValidationFlags(False, False, False, False)
_RESPONSE_FLAGS = HeaderValidationFlags(False, False, True, False)
_TRAILER_FLAGS = HeaderValidationFlags(False, True, False, False)


def h2_inbound() -> None:
    list(validate_headers(normalize_inbound_headers(REQUEST, _REQUEST_FLAGS), _REQUEST_FLAGS))


def h2_outbound() -> None:
    for block, flags in ((RESPONSE, _RESPONSE_FLAGS), (TRAILERS, _TRAILER_FLAGS)):
        normalized = normalize_outbound_headers(utf8_encode_headers(block), flags, False)
        list(validate_outbound_headers(normalized, flags))


def ours_inbound() -> None:
    inbound_headers.request_headers(REQUEST)


def ours_outbound() -> None:
    outbound_headers.response_headers(RESPONSE)
    outbound_headers.trailer_headers(TRAILERS)


if __name__ == "__main__":
    for label, h2_way, our_way in (
        ("request headers (9)", h2_inbound, ours_inbound),
        ("response headers + trailers (6 + 2)", h2_outbound, ours_outbound),
    ):
        h2_us = timeit.timeit(h2_way, number=ROUNDS) / ROUNDS * 1e6
        our_us = timeit.timeit(our_way, number=ROUNDS) / ROUNDS * 1e6
        print(f"{label:38s} h2 {h2_us:5.1f} µs   one pass {our_us:5.1f} µs   {h2_us / our_us:.1f}x")
