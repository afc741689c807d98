"""Request ids: accept a client's id when it is safe to log and echo, else make one."""

from __future__ import annotations

import itertools
import os

MAX_REQUEST_ID_LENGTH = 128
# Visible ASCII only: no spaces or control characters, so an id can never split a log
# line or smuggle a header.
_ALLOWED = frozenset(chr(c) for c in range(0x21, 0x7F))


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and _ALLOWED.issuperset(value)


# 64 random bits per process, then a counter: unique without a system call per request.
_PROCESS_PART = ""
_counter = itertools.count()


def _new_process() -> None:
    global _PROCESS_PART, _counter
    _PROCESS_PART = os.urandom(8).hex()
    _counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


_new_process()
os.register_at_fork(after_in_child=_new_process)  # a forked worker is another process


def new_request_id() -> str:
    """32 hex digits (the shape of a W3C trace id): the process's random half, then a
    counter, so ids never repeat within a process and hardly across processes."""
    return f"{_PROCESS_PART}{next(_counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def request_id_from(value: str | None) -> str:
    return value if value is not None and valid_request_id(value) else new_request_id()


__all__ = ["MAX_REQUEST_ID_LENGTH", "new_request_id", "request_id_from", "valid_request_id"]
