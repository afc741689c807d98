"""RFC 9113's rules on header fields that received and sent blocks share, for the one-pass
checks in inbound_headers.py and outbound_headers.py (raising h2's ``ProtocolError``,
with h2's texts)."""

from __future__ import annotations

from typing import Final

from h2.exceptions import ProtocolError

# Hop-by-hop fields HTTP/2 forbids (RFC 9113 section 8.2.2).
CONNECTION_FIELDS: Final = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
PSEUDO_FIELDS: Final = frozenset(
    (b":method", b":scheme", b":authority", b":path", b":status", b":protocol")
)


def add_pseudo_header(name: bytes, seen: set[bytes], *, after_regular: bool) -> None:
    """Record pseudo-header ``name`` in ``seen``: refused when repeated, when it follows a
    regular field, or when RFC 9113 (section 8.3) does not define it."""
    if name in seen:
        msg = f"Received duplicate pseudo-header field {name!r}"
        raise ProtocolError(msg)
    seen.add(name)
    if after_regular:
        msg = f"Received pseudo-header field out of sequence: {name!r}"
        raise ProtocolError(msg)
    if name not in PSEUDO_FIELDS:
        msg = f"Received custom pseudo-header field {name!r}"
        raise ProtocolError(msg)


def check_te(value: bytes) -> None:
    """``te`` may only say ``trailers`` (RFC 9113 section 8.2.2)."""
    if value.lower() != b"trailers":
        msg = f"Invalid value for TE header: {value!r}"
        raise ProtocolError(msg)


__all__ = ["CONNECTION_FIELDS", "PSEUDO_FIELDS", "add_pseudo_header", "check_te"]
