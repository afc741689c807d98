"""Request ids: accept a client's id when it is safe to log and echo, else make one."""

from __future__ import annotations

import os

MAX_REQUEST_ID_LENGTH = 128
# Visible ASCII only: no spaces or control characters, so an id can never split a log
# line or smuggle a header.
_ALLOWED = frozenset(chr(c) for c in range(0x21, 0x7F))


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and _ALLOWED.issuperset(value)


# Random bytes drawn 4 KiB at a time: 256 ids per system call instead of one each.
# Ids are made on the event loop's thread only, so the pool needs no lock.
_POOL_BYTES = 4096
_pool = b""
_taken = 0


def _new_process() -> None:
    global _pool, _taken
    _pool, _taken = b"", 0  # a forked child must not repeat its parent's ids


os.register_at_fork(after_in_child=_new_process)


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a W3C trace id): unguessable, so a
    caller cannot predict (and reuse) another caller's id."""
    global _pool, _taken
    if _taken + 16 > len(_pool):
        _pool, _taken = os.urandom(_POOL_BYTES), 0
    start, _taken = _taken, _taken + 16
    return _pool[start:_taken].hex()


def request_id_from(value: str | None) -> str:
    return value if value is not None and valid_request_id(value) else new_request_id()


__all__ = ["MAX_REQUEST_ID_LENGTH", "new_request_id", "request_id_from", "valid_request_id"]
