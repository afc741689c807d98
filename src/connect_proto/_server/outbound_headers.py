"""A header block about to be sent, normalized and checked in one pass.

Before encoding a block h2 runs it through nine chained generators (lower-case names,
strip whitespace, drop hop-by-hop fields, mark credentials never-indexed; then refuse a
bad ``te``, misplaced or unknown pseudo-headers, a response without ``:status``, any
pseudo-header in trailers). ``response_headers`` and ``trailer_headers`` do the same in
one loop and raise h2's ``ProtocolError`` for the blocks h2 refuses;
``tests/connect_proto/test_outbound_headers.py`` compares the two on generated blocks.
A header whose name and value need no change is passed on as it came.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from h2.exceptions import ProtocolError
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from connect_proto._server.header_rules import CONNECTION_FIELDS, add_pseudo_header, check_te

Header = tuple[bytes, bytes] | HeaderTuple

# Kept out of every compression context (h2, after Firefox and nghttp2): credentials, and
# cookies short enough to guess.
_CREDENTIALS: Final = frozenset((b"authorization", b"proxy-authorization"))
_SHORT_COOKIE: Final = 20
_REQUEST_ONLY: Final = frozenset((b":scheme", b":path", b":authority", b":method", b":protocol"))


def response_headers(headers: Iterable[Header | tuple[str, str]]) -> list[Header]:
    """A response's header block (informational or final)."""
    return _check(headers, trailer=False)


def trailer_headers(headers: Iterable[Header | tuple[str, str]]) -> list[Header]:
    """A response's trailers."""
    return _check(headers, trailer=True)


def _check(headers: Iterable[Header | tuple[str, str]], *, trailer: bool) -> list[Header]:
    out: list[Header] = []
    pseudo: set[bytes] = set()
    seen_regular = False
    for header in headers:
        raw_name, raw_value = header[0], header[1]
        name = raw_name.encode() if isinstance(raw_name, str) else raw_name
        value = raw_value.encode() if isinstance(raw_value, str) else raw_value
        name = name.lower().strip()
        value = value.strip()
        if name in CONNECTION_FIELDS:
            continue  # hop-by-hop: dropped, as h2 does
        if name in _CREDENTIALS or (name == b"cookie" and len(value) < _SHORT_COOKIE):
            header = NeverIndexedHeaderTuple(name, value)
        elif name != raw_name or value != raw_value:
            if isinstance(header, HeaderTuple):
                header = header.__class__(name, value)  # never-indexed stays so
            else:
                header = (name, value)
        out.append(header)  # type: ignore[arg-type]

        if not name:  # (h2 fails with an IndexError here)
            msg = "Header name with zero length."
            raise ProtocolError(msg)
        if name[0] == 0x3A:  # ":": a pseudo-header
            add_pseudo_header(name, pseudo, after_regular=seen_regular)
        else:
            seen_regular = True
            if name == b"te":
                check_te(value)

    if trailer:
        if pseudo:
            msg = f"Received pseudo-header in trailer {pseudo}"
            raise ProtocolError(msg)
    else:
        if b":status" not in pseudo:
            msg = "Header block missing mandatory b':status' header"
            raise ProtocolError(msg)
        if pseudo & _REQUEST_ONLY:
            msg = f"Encountered request-only headers {pseudo & _REQUEST_ONLY}"
            raise ProtocolError(msg)
    return out


__all__ = ["response_headers", "trailer_headers"]
