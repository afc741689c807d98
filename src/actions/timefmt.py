"""RFC 3339 timestamps as stored on objects, and their protobuf counterparts."""

from __future__ import annotations

import functools
import time
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp


def now() -> str:
    """Current UTC time, microsecond precision (phase history needs sub-second order)."""
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{_second(seconds)}.{micros:06d}Z"


def now_seconds() -> str:
    """Current UTC time in whole seconds: the API server's metadata timestamp format."""
    return f"{_second(time.time_ns() // 1_000_000_000)}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second: formatted once per second, not per call."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def from_timestamp(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
