"""Health: the ``grpc.health.v1.Health`` service and plain-HTTP ``/healthz`` and ``/readyz``.

``HealthStatus`` is the registry the application writes to (``set("", SERVING)`` for the
whole server, ``set("pkg.Service", NOT_SERVING)`` for one service); ``HealthService``
serves it over every protocol the app speaks; ``Readiness`` runs named checks for the
Kubernetes-style probes.

gRPC health semantics (https://github.com/grpc/grpc/blob/master/doc/health-checking.md):
``Check`` on an unknown service is NOT_FOUND; ``Watch`` on an unknown service sends
SERVICE_UNKNOWN and keeps watching, because the service may be registered later; a
watcher sees the current status at once and then every change (intermediate states may
be merged, the latest always arrives). ``enter_graceful_shutdown`` turns everything
NOT_SERVING, tells watchers, then ends their streams with UNAVAILABLE.

Wiring::

    health = HealthStatus()                         # "" starts SERVING
    readiness = Readiness({"store": store_ok})
    ConnectApp([..., (HEALTH_SERVICE, HealthService(health))],
               http_routes={"/healthz": healthz_app, "/readyz": readiness.app})
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import trio
from grpc_health.v1 import health_pb2

from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._types import AsgiReceive, AsgiSend, Scope, SendMessage

log = logging.getLogger("connect_proto._extras.health")

HEALTH_SERVICE: Final = health_pb2.DESCRIPTOR.services_by_name["Health"]
ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
UNKNOWN: Final = health_pb2.HealthCheckResponse.UNKNOWN
SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Final = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# List answers at most this many services (gRPC proposal A90). List is only in recent
# grpcio-health-checking releases of health.proto; with an older one it is not routed.
MAX_LIST_SERVICES: Final = 100
# Watch streams open at once; past it, Watch answers RESOURCE_EXHAUSTED. Health is open
# without a token, so this bounds what unauthenticated watchers can hold (each holds a
# task and its buffers for as long as it stays open).
MAX_WATCHERS: Final = 1000


class HealthStatus:
    """Serving status per service name; ``""`` is the server as a whole.

    Call ``set`` from the trio thread (it wakes watchers). After
    ``enter_graceful_shutdown`` every service reads NOT_SERVING and further ``set``
    calls are ignored, so a load balancer drains the server before it stops.
    """

    def __init__(self, overall: int = SERVING) -> None:
        self._statuses: dict[str, int] = {"": overall}
        self._changed = trio.Event()
        self._shutting_down = False

    def set(self, service: str, status: int) -> None:
        if status not in ServingStatus.values() or status == SERVICE_UNKNOWN:
            # SERVICE_UNKNOWN is what a watcher of an absent service sees, not a state.
            raise ValueError(f"not a settable serving status: {status!r}")
        if self._shutting_down:
            return
        if self._statuses.get(service) == status:
            return
        self._statuses[service] = status
        self._wake()

    def clear(self, service: str) -> None:
        """Forget ``service``: Check answers NOT_FOUND, watchers see SERVICE_UNKNOWN."""
        if self._statuses.pop(service, None) is not None:
            self._wake()

    def get(self, service: str) -> int | None:
        return self._statuses.get(service)

    def snapshot(self) -> dict[str, int]:
        return dict(self._statuses)

    def is_serving(self, service: str = "") -> bool:
        """Usable as a readiness check: ``readiness.add("grpc", health.is_serving)``."""
        return self._statuses.get(service) == SERVING

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def enter_graceful_shutdown(self) -> None:
        self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
        self._shutting_down = True
        self._wake()

    def _wake(self) -> None:
        # One Event per generation: waking everyone then replacing it means a watcher
        # that was busy sending re-reads the latest state instead of missing a change.
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def changed_event(self) -> trio.Event:
        """Set at the next change after this call (take it before reading the state)."""
        return self._changed

    def current(self, service: str) -> int:
        """What a watcher sees: the status, or SERVICE_UNKNOWN."""
        return self._statuses.get(service, SERVICE_UNKNOWN)


class HealthService:
    """``grpc.health.v1.Health`` over a ``HealthStatus``; at most ``max_watchers`` Watch
    streams at once (None: unbounded)."""

    def __init__(self, status: HealthStatus, *, max_watchers: int | None = MAX_WATCHERS) -> None:
        if max_watchers is not None and max_watchers < 0:
            raise ValueError("max_watchers must be >= 0")
        self.status = status
        self.max_watchers = max_watchers
        self.watchers = 0  # Watch streams open now

    async def check(
        self, request: health_pb2.HealthCheckRequest, ctx: RequestContext
    ) -> health_pb2.HealthCheckResponse:
        found = self.status.get(request.service)
        if found is None:
            raise RpcError(Code.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=found)  # type: ignore[arg-type]

    async def list(self, request: Any, ctx: RequestContext) -> Any:
        # gRPC proposal A90: past this many services, List answers RESOURCE_EXHAUSTED
        # rather than an unbounded response.
        statuses = self.status.snapshot()
        if len(statuses) > MAX_LIST_SERVICES:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"more than {MAX_LIST_SERVICES} services")
        response = health_pb2.HealthListResponse()
        for service, status in statuses.items():
            response.statuses[service].status = status  # type: ignore[assignment]
        return response

    async def watch(
        self,
        request: health_pb2.HealthCheckRequest,
        ctx: RequestContext,
        send: SendMessage[health_pb2.HealthCheckResponse],
    ) -> None:
        # Runs until the client leaves (the protocol layer cancels us on disconnect) or
        # the server shuts down: then the client gets NOT_SERVING and the stream ends with
        # UNAVAILABLE, so that open watches do not hold up hypercorn's graceful shutdown.
        if self.max_watchers is not None and self.watchers >= self.max_watchers:
            raise RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"too many health watches: the server allows {self.max_watchers}; retry later",
            )
        self.watchers += 1
        try:
            await self._watch(request, send)
        finally:
            self.watchers -= 1

    async def _watch(
        self,
        request: health_pb2.HealthCheckRequest,
        send: SendMessage[health_pb2.HealthCheckResponse],
    ) -> None:
        last: int | None = None
        while True:
            # Taken before reading, so a change made while we send is not lost.
            changed = self.status.changed_event()
            current = self.status.current(request.service)
            if current != last:
                await send(health_pb2.HealthCheckResponse(status=current))  # type: ignore[arg-type]
                last = current
            if self.status.shutting_down:
                raise RpcError(Code.UNAVAILABLE, "server is shutting down")
            await changed.wait()


# --------------------------------------------------------------------------- HTTP probes

Check = Callable[[], bool | Awaitable[bool]]


async def _plain(send: AsgiSend, status: int, body: bytes, *, head: bool = False) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


async def _method_allowed(scope: Scope, send: AsgiSend) -> bool:
    if scope.get("method") in ("GET", "HEAD"):
        return True
    await send(
        {
            "type": "http.response.start",
            "status": 405,
            "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return False


async def healthz_app(scope: Scope, receive: AsgiReceive, send: AsgiSend) -> None:
    """Liveness: 200 ``ok`` whenever the process can answer at all."""
    if await _method_allowed(scope, send):
        await _plain(send, 200, b"ok\n", head=scope["method"] == "HEAD")


class Readiness:
    """Named readiness checks and the ``/readyz`` ASGI app (``self.app``).

    A check returns a bool (sync or async); raising, or taking longer than
    ``check_timeout`` seconds, counts as failing. 200 ``ok`` when all pass, else 503
    ``not ready: <names>``; ``?verbose`` lists every check (``[+]store ok``). Checks run
    one after another: they are meant to be cheap reads of state the application keeps
    (store reachable, watch synced). The default ``check_timeout`` stays under the
    2 s probe timeout in k8s/deployment.yaml, so a slow check yields a 503, not a
    probe timeout.
    """

    def __init__(self, checks: Mapping[str, Check] | None = None, *, check_timeout: float = 1.0):
        self._checks: dict[str, Check] = dict(checks or {})
        self.check_timeout = check_timeout

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    async def results(self) -> list[tuple[str, bool]]:
        """Each check's name and whether it passes now, in registration order."""
        return [
            (name, await self._passes(name, check)) for name, check in list(self._checks.items())
        ]

    async def failing(self) -> list[str]:
        """Names of the checks that do not pass right now, in registration order."""
        return [name for name, ok in await self.results() if not ok]

    async def _passes(self, name: str, check: Check) -> bool:
        with trio.move_on_after(self.check_timeout):
            try:
                result = check()
                if isinstance(result, Awaitable):
                    result = await result
                return bool(result)
            except Exception:
                log.exception("readiness check %r raised", name)
                return False
        log.warning("readiness check %r timed out", name)
        return False

    async def app(self, scope: Scope, receive: AsgiReceive, send: AsgiSend) -> None:
        if not await _method_allowed(scope, send):
            return
        results = await self.results()
        failed = [name for name, ok in results if not ok]
        status = 503 if failed else 200
        if b"verbose" in scope.get("query_string", b""):
            # One line per check, as Kubernetes' /readyz?verbose does.
            lines = [f"[+]{name} ok" if ok else f"[-]{name} failed" for name, ok in results]
            lines.append("not ready" if failed else "ok")
            body = "\n".join(lines) + "\n"
        elif failed:
            body = f"not ready: {', '.join(failed)}\n"
        else:
            body = "ok\n"
        await _plain(send, status, body.encode(), head=scope["method"] == "HEAD")


__all__ = [
    "HEALTH_SERVICE",
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "UNKNOWN",
    "HealthService",
    "HealthStatus",
    "Readiness",
    "healthz_app",
]
