"""Request ids: accept a client's id when it is safe to log and echo, else make one."""

from __future__ import annotations

import os

MAX_REQUEST_ID_LENGTH = 128
# Visible ASCII only: no spaces or control characters, so an id can never split a log
# line or smuggle a header.
_ALLOWED = frozenset(chr(c) for c in range(0x21, 0x7F))


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and _ALLOWED.issuperset(value)


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a W3C trace id)."""
    return os.urandom(16).hex()


def request_id_from(value: str | None) -> str:
    return value if value is not None and valid_request_id(value) else new_request_id()


__all__ = ["MAX_REQUEST_ID_LENGTH", "new_request_id", "request_id_from", "valid_request_id"]
