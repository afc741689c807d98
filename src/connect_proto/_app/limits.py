"""Admission limits on long-lived calls (sans-IO counters).

A server stream holds memory and a task for as long as the client keeps it open, so
their number is bounded per app and, optionally, per method; a call over the bound is
refused with RESOURCE_EXHAUSTED before its handler runs. Unary and client-streaming
calls are not counted: they end by themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

from connect_proto._errors import Code, RpcError
from connect_proto._service import MethodKind, RpcRoute

STREAMING_KINDS = frozenset({MethodKind.SERVER_STREAMING, MethodKind.BIDI_STREAMING})


class StreamLimiter:
    """Counts open server streams; ``acquire`` refuses past the limits, ``release`` frees.

    ``max_streams``: for the whole app (None = unbounded). ``per_method``: path ->
    bound, checked against the route table at start-up (``bind``).
    """

    def __init__(self, max_streams: int | None = None, per_method: Mapping[str, int] | None = None):
        if max_streams is not None and max_streams < 0:
            raise ValueError("max_streams must be >= 0")
        self.max_streams = max_streams
        self.per_method = dict(per_method or {})
        self.open_by_method: dict[str, int] = {}  # path -> open streams (no zero entries)

    @property
    def open(self) -> int:
        """Open streams in all."""
        return sum(self.open_by_method.values())

    def bind(self, routes: Mapping[str, RpcRoute]) -> None:
        for path, bound in self.per_method.items():
            route = routes.get(path)
            if route is None:
                raise ValueError(f"stream limit for unknown method {path}")
            if route.kind not in STREAMING_KINDS:
                raise ValueError(f"stream limit for {path}, which does not stream responses")
            if bound < 0:
                raise ValueError(f"stream limit for {path} must be >= 0")

    def acquire(self, path: str) -> RpcError | None:
        """Take a slot for a new stream on ``path``, or return the refusal."""
        if self.max_streams is not None and self.open >= self.max_streams:
            return RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"too many open streams: the server allows {self.max_streams}; retry later",
            )
        method_bound = self.per_method.get(path)
        current = self.open_by_method.get(path, 0)
        if method_bound is not None and current >= method_bound:
            return RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"too many open streams for {path}: the server allows {method_bound}; retry later",
            )
        self.open_by_method[path] = current + 1
        return None

    def release(self, path: str) -> None:
        left = self.open_by_method[path] - 1
        if left:
            self.open_by_method[path] = left
        else:
            del self.open_by_method[path]


__all__ = ["STREAMING_KINDS", "StreamLimiter"]
