"""A received header block, normalized and checked in one pass.

h2 joins split cookie fields (RFC 9113 section 8.2.3) and checks a received block
against RFC 9113 sections 8.2 and 8.3 with a chain of seven generators, each resumed once
per header, looking at every byte of every name and value in a Python loop. On a server
answering small RPCs that is a visible part of reading each request. ``request_headers``
and ``trailer_headers`` apply the same rules in one loop, with compiled patterns and a
bounded cache of names already found valid, and raise h2's ``ProtocolError`` for exactly
the blocks h2 refuses (with h2's text for the fault h2 would name; a block with several
faults may be refused for another of them). ``tests/connect_proto/test_inbound_headers.py``
holds them to that on generated blocks.

The result is h2's: the headers as decoded (the same objects, in order) without the
cookie fields, which follow joined into one never-indexed ``cookie`` field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from h2.exceptions import ProtocolError
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from connect_proto._server.header_rules import CONNECTION_FIELDS, add_pseudo_header, check_te

# RFC 9113 section 8.2.1: no name byte in 0x00-0x20, 0x41-0x5a (upper case) or 0x7f-0xff;
# a colon only as the first byte (a pseudo-header).
_BAD_NAME_BYTE: Final = re.compile(rb"[\x00-\x20\x41-\x5a\x7f-\xff]")
# ... and no value with NUL, LF or CR anywhere, nor leading or trailing SP or HTAB.
_BAD_VALUE_BYTE: Final = re.compile(rb"[\x00\n\r]")
_WHITESPACE: Final = (0x20, 0x09)


# Names seen valid, so that each distinct name is scanned once; bounded, since names are
# chosen by the peer.
_VALID_NAMES: Final[set[bytes]] = set()
_VALID_NAMES_LIMIT: Final = 512

# A decoded field as h2 hands it over: hpack's tuple, or a plain pair of bytes.
Header = HeaderTuple | tuple[bytes, bytes]


def request_headers(headers: Iterable[Header]) -> list[Header]:
    """A request's header block (not trailers); raises ProtocolError as h2 would."""
    return _check(headers, trailer=False)


def trailer_headers(headers: Iterable[Header]) -> list[Header]:
    """A request's trailers; raises ProtocolError as h2 would."""
    return _check(headers, trailer=True)


def _check(headers: Iterable[Header], *, trailer: bool) -> list[Header]:
    out: list[Header] = []
    cookies: list[bytes] = []
    for header in headers:
        if header[0] == b"cookie":
            cookies.append(header[1])
        else:
            out.append(header)
    if cookies:
        out.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))

    pseudo: set[bytes] = set()
    seen_regular = False
    method: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    for header in out:
        name, value = header[0], header[1]
        if name not in _VALID_NAMES:
            _check_name(name)
        if value:
            bad = _BAD_VALUE_BYTE.search(value)
            if bad is not None:
                msg = f"Illegal character '{chr(bad.group()[0])}' in header value: {value!r}"
                raise ProtocolError(msg)
            if value[0] in _WHITESPACE or value[-1] in _WHITESPACE:
                msg = f"Received header value surrounded by whitespace {value!r}"
                raise ProtocolError(msg)
        if name[0] == 0x3A:  # ":": a pseudo-header
            add_pseudo_header(name, pseudo, after_regular=seen_regular)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value and not trailer:
                msg = "An empty :path header is forbidden"
                raise ProtocolError(msg)
        else:
            seen_regular = True
            if name == b"te":
                check_te(value)
            elif name in CONNECTION_FIELDS:
                msg = f"Connection-specific header field present: {name!r}."
                raise ProtocolError(msg)
            elif name == b"host" and not trailer:
                if host is not None:
                    msg = "Request header block has multiple Host headers."
                    raise ProtocolError(msg)
                host = value

    if trailer:
        if pseudo:
            msg = f"Received pseudo-header in trailer {pseudo}"
            raise ProtocolError(msg)
        return out
    _check_request_pseudo_headers(pseudo, method)
    if authority is None and host is None:
        msg = "Request header block does not have an :authority or Host header."
        raise ProtocolError(msg)
    if authority is not None and host is not None and authority != host:
        msg = (
            "Request header block has mismatched :authority and "
            f"Host headers: {authority!r} / {host!r}"
        )
        raise ProtocolError(msg)
    return out


def _check_name(name: bytes) -> None:
    bad = _BAD_NAME_BYTE.search(name)
    if bad is not None:
        c = bad.group()[0]
        if 0x41 <= c <= 0x5A:
            msg = f"Received uppercase header name {name!r}."
        else:
            msg = f"Illegal character '{chr(c)}' in header name: {name!r}"
        raise ProtocolError(msg)
    if name.find(b":", 1) != -1:
        msg = f"Illegal character ':' in header name: {name!r}"
        raise ProtocolError(msg)
    if not name:
        msg = "Received header name with zero length."
        raise ProtocolError(msg)
    if len(_VALID_NAMES) < _VALID_NAMES_LIMIT:
        _VALID_NAMES.add(name)


def _check_request_pseudo_headers(pseudo: set[bytes], method: bytes | None) -> None:
    """RFC 9113 section 8.3.1, and RFC 8441 section 4 for extended CONNECT."""
    _require(b":method", pseudo)
    is_connect = method == b"CONNECT"
    if is_connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            msg = "Ordinary CONNECT MUST NOT include :scheme or :path"
            raise ProtocolError(msg)
    else:
        _require(b":scheme", pseudo)
        _require(b":path", pseudo)
    if b":status" in pseudo:
        msg = f"Encountered response-only headers { {b':status'} }"
        raise ProtocolError(msg)
    if not is_connect and b":protocol" in pseudo:
        msg = f"Encountered connect-request-only headers { {b':protocol'}!r}"
        raise ProtocolError(msg)


def _require(name: bytes, pseudo: set[bytes]) -> None:
    if name not in pseudo:
        msg = f"Header block missing mandatory {name!r} header"
        raise ProtocolError(msg)


__all__ = ["request_headers", "trailer_headers"]
