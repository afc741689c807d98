"""Interceptors and observers: the app's explicit extension points around every RPC.

- An ``Interceptor`` runs before the handler (after protocol negotiation, inside the
  call's deadline) and may refuse the call by raising ``RpcError``; the refusal is
  rendered in the call's own protocol. Authentication is one.
- An ``Observer`` is told when a call starts and how it ended (code, duration, message
  counts). Metrics and access logs are observers.

Both may define ``bind(routes)``, called once when the ``ConnectApp`` is built, to
resolve whatever they need per route ahead of time; nothing is looked up per request.
Calls that never reach a route (404, 405, 415, CORS preflight) are not observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from connect_proto._context import RequestContext
from connect_proto._errors import Code
from connect_proto._service import RpcRoute


class Interceptor(Protocol):
    async def intercept(self, route: RpcRoute, ctx: RequestContext) -> None:
        """Inspect the call before its handler runs; raise ``RpcError`` to refuse it."""


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How an observed call ended.

    ``code`` is None for success. A call whose client went away, or that was cancelled
    before it could answer, reports CANCELED.
    """

    code: Code | None
    duration: float  # seconds, from dispatch to the last byte handed to the server
    messages_received: int
    messages_sent: int

    @property
    def code_name(self) -> str:
        return "ok" if self.code is None else self.code.connect_name


class Observer(Protocol):
    def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        """A call was accepted for ``route`` (before any interceptor ran)."""

    def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        """The call is over; called exactly once per ``call_started``."""


@runtime_checkable
class Bindable(Protocol):
    def bind(self, routes: Mapping[str, RpcRoute]) -> None: ...


def check_hooks(interceptors: Iterable[object], observers: Iterable[object]) -> None:
    """Fail at start-up, not on the first request, when a hook lacks its methods."""
    for hook in interceptors:
        if not callable(getattr(hook, "intercept", None)):
            raise TypeError(f"interceptor {hook!r} has no intercept(route, ctx) method")
    for hook in observers:
        for name in ("call_started", "call_finished"):
            if not callable(getattr(hook, name, None)):
                raise TypeError(f"observer {hook!r} has no {name} method")


def bind_all(hooks: Iterable[object], routes: Mapping[str, RpcRoute]) -> None:
    """Give every hook that wants it the route table, once, at start-up."""
    for hook in hooks:
        if isinstance(hook, Bindable):
            hook.bind(routes)


__all__ = ["CallOutcome", "Interceptor", "Observer", "bind_all", "check_hooks"]
