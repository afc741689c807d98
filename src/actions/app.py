"""The Actions Service as an ASGI app, and ``serve`` to run it under hypercorn.

The store is opened and the fan-out started in the app's lifespan, so hypercorn answers
no RPC before the watcher follows the store (the contract's ``start_watching`` rule).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from actions.config import Config
from actions.fanout import FanOut
from actions.metrics import FanOutMetrics
from actions.service import SERVICE_DESCRIPTOR, ActionsService
from actions.store.base import Store
from connect_proto.app import ConnectApp
from connect_proto.server import make_config
from connect_proto.server import serve as serve_asgi

log = logging.getLogger(__name__)

OpenStore = Callable[[Config], Awaitable[Store]]


async def open_embedded_store(config: Config) -> Store:
    from actions.store.embedded import EmbeddedStore

    data_dir = config.resolved_data_dir()
    store = await EmbeddedStore.open(data_dir, config.namespace)
    log.info("embedded store: %s", getattr(store, "path", data_dir))
    return store


async def open_memory_store(config: Config) -> Store:
    from actions.store.embedded import EmbeddedStore

    return await EmbeddedStore.open(None, config.namespace)


@dataclass
class ActionsApplication:
    """The ASGI app plus the handles the runner needs to stop it cleanly."""

    app: ConnectApp
    service: ActionsService
    config: Config
    metrics: FanOutMetrics
    fanout: FanOut | None = field(default=None)

    def begin_shutdown(self) -> None:
        """End every watch stream now (UNAVAILABLE), so that hypercorn's graceful
        shutdown does not wait for streams that would never finish by themselves."""
        if self.fanout is not None:
            self.fanout.shutdown()


def build_app(config: Config, *, open_store: OpenStore = open_embedded_store) -> ActionsApplication:
    config.validate()
    service = ActionsService(namespace=config.namespace)
    metrics = FanOutMetrics()
    holder: dict[str, ActionsApplication] = {}

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        store = await open_store(config)
        try:
            fanout = FanOut(
                store,
                namespace=config.namespace,
                workers=config.watch_workers,
                buffer_size=config.watch_buffer_size,
                subscriber_buffer=config.subscriber_buffer_size,
                metrics=metrics,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(fanout.run)
                service.bind(store, fanout)
                holder["app"].fanout = fanout
                try:
                    yield
                finally:
                    fanout.shutdown()
                    service.bind(None, None)
                    holder["app"].fanout = None
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    async def healthz(scope: dict[str, Any], receive: Any, send: Any) -> None:
        application = holder["app"]
        ok = application.fanout is not None and application.fanout.running
        await _plain(send, 200 if ok else 503, b"ok\n" if ok else b"starting\n", "text/plain")

    async def metrics_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
        application = holder["app"]
        body = metrics.snapshot()
        fan = application.fanout
        body["watch_streams"] = fan.subscriber_count() if fan is not None else 0
        await _plain(send, 200, json.dumps(body).encode() + b"\n", "application/json")

    app = ConnectApp(
        [(SERVICE_DESCRIPTOR, service)],
        lifespan=lifespan,
        http_routes={"/healthz": healthz, "/metrics": metrics_route},
    )
    application = ActionsApplication(app=app, service=service, config=config, metrics=metrics)
    holder["app"] = application
    return application


async def _plain(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve(
    config: Config,
    *,
    open_store: OpenStore = open_embedded_store,
    graceful_timeout: float = 5.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port (useful with
    port 0). On cancellation the watch streams end first, then hypercorn shuts down
    gracefully and the lifespan closes the store."""
    application = build_app(config, open_store=open_store)
    hconfig = make_config(config.host, config.port, graceful_timeout=graceful_timeout)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_asgi, application.app, hconfig)
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            application.begin_shutdown()
