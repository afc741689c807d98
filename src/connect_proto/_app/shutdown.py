"""Graceful shutdown of the RPC layer: end open streams cleanly, refuse new calls.

hypercorn's graceful stop waits for in-flight requests, but a server stream (a watch)
never ends by itself, so it would only be cut off at ``graceful_timeout`` with no
status. ``ShutdownSignal.begin`` instead cancels every registered stream handler; the
runner turns that into an UNAVAILABLE end-of-stream (Connect end-stream message, gRPC
trailers, gRPC-Web trailer frame), which clients treat as "retry elsewhere". Unary
calls are not registered: they keep running and get hypercorn's grace period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from connect_proto._errors import Code, RpcError

SHUTTING_DOWN_MESSAGE = "server is shutting down"


def shutting_down_error() -> RpcError:
    return RpcError(Code.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)


class ShutdownSignal:
    """Set once; cancels registered stream scopes and answers ``draining`` afterwards."""

    __slots__ = ("_callbacks", "_scopes", "draining", "event")

    def __init__(self) -> None:
        self.draining = False
        self.event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()
        self._callbacks: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (synchronously) when shutdown begins; at once if it has."""
        if self.draining:
            callback()
        else:
            self._callbacks.append(callback)

    def begin(self) -> None:
        """Idempotent. Must be called from the trio thread."""
        if self.draining:
            return
        self.draining = True
        self.event.set()
        for scope in self._scopes:
            scope.cancel()
        for callback in self._callbacks:
            callback()

    @contextmanager
    def stream_scope(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for one stream handler, cancelled when shutdown begins."""
        scope = trio.CancelScope()
        if self.draining:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)


__all__ = ["SHUTTING_DOWN_MESSAGE", "ShutdownSignal", "shutting_down_error"]
