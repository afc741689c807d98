"""Admission limits on long-lived calls (sans-IO counters).

A server stream holds memory and a task for as long as the client keeps it open, so
their number is bounded for the whole app, optionally per method, and optionally per
client connection; a call over a bound is refused with RESOURCE_EXHAUSTED before its
handler runs. Unary and client-streaming calls are not counted: they end by themselves
(every write has a deadline, see ``runner``). The app takes a slot only after the
interceptors (authentication) accepted the call, so that a caller without a token can
never hold one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from connect_proto._errors import Code, RpcError
from connect_proto._service import MethodKind, RpcRoute

STREAMING_KINDS = frozenset({MethodKind.SERVER_STREAMING, MethodKind.BIDI_STREAMING})


def _exhausted(what: str, bound: int) -> RpcError:
    return RpcError(
        Code.RESOURCE_EXHAUSTED,
        f"too many open streams {what}: the server allows {bound}; retry later",
    )


class StreamLimiter:
    """Counts open server streams; ``acquire`` refuses past the limits, ``release`` frees.

    ``max_streams``: for the whole app (None = unbounded). ``per_method``: path ->
    bound, checked against the route table at start-up (``bind``). ``per_connection``:
    for each client connection (the peer's address and port; None = unbounded).
    """

    def __init__(
        self,
        max_streams: int | None = None,
        per_method: Mapping[str, int] | None = None,
        per_connection: int | None = None,
    ):
        if max_streams is not None and max_streams < 0:
            raise ValueError("max_streams must be >= 0")
        if per_connection is not None and per_connection < 0:
            raise ValueError("max_streams_per_connection must be >= 0")
        self.max_streams = max_streams
        self.per_method = dict(per_method or {})
        self.per_connection = per_connection
        self.open = 0  # open streams in all
        self.open_by_method: dict[str, int] = {}  # path -> open streams (no zero entries)
        self.open_by_connection: dict[Hashable, int] = {}  # peer -> open (no zero entries)

    def bind(self, routes: Mapping[str, RpcRoute]) -> None:
        for path, bound in self.per_method.items():
            route = routes.get(path)
            if route is None:
                raise ValueError(f"stream limit for unknown method {path}")
            if route.kind not in STREAMING_KINDS:
                raise ValueError(f"stream limit for {path}, which does not stream responses")
            if bound < 0:
                raise ValueError(f"stream limit for {path} must be >= 0")

    def acquire(self, path: str, connection: Hashable = None) -> RpcError | None:
        """Take a slot for a new stream on ``path`` from ``connection`` (None: not
        counted per connection), or return the refusal."""
        if self.max_streams is not None and self.open >= self.max_streams:
            return _exhausted("on this server", self.max_streams)
        method_bound = self.per_method.get(path)
        on_method = self.open_by_method.get(path, 0)
        if method_bound is not None and on_method >= method_bound:
            return _exhausted(f"for {path}", method_bound)
        on_connection = 0
        if self.per_connection is not None and connection is not None:
            on_connection = self.open_by_connection.get(connection, 0)
            if on_connection >= self.per_connection:
                return _exhausted("on this connection", self.per_connection)
            self.open_by_connection[connection] = on_connection + 1
        self.open_by_method[path] = on_method + 1
        self.open += 1
        return None

    def release(self, path: str, connection: Hashable = None) -> None:
        self.open -= 1
        left = self.open_by_method[path] - 1
        if left:
            self.open_by_method[path] = left
        else:
            del self.open_by_method[path]
        if self.per_connection is not None and connection is not None:
            left = self.open_by_connection[connection] - 1
            if left:
                self.open_by_connection[connection] = left
            else:
                del self.open_by_connection[connection]


__all__ = ["STREAMING_KINDS", "StreamLimiter"]
