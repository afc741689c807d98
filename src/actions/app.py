"""The Actions Service as an ASGI app, and ``serve`` to run it under hypercorn.

One port serves:

- ``flyteidl2.actions.ActionsService`` (Connect, gRPC, gRPC-Web), behind the optional
  bearer-token interceptor and the watch-subscription cap;
- ``grpc.health.v1.Health`` ("" and the service name: SERVING once ready) and gRPC
  reflection v1 and v1alpha, open without a token;
- plain HTTP ``/healthz`` (alive), ``/readyz`` (store reachable, watch fan-out running)
  and ``/metrics`` (Prometheus), also open.

The store is opened and the fan-out started in the app's lifespan, before hypercorn
answers anything (the contract's ``start_watching`` rule). The Kubernetes store is
opened without waiting for its first list (``wait_for_sync=False``), so that the process
is alive (``/healthz``) and says why it is not ready (``/readyz``, a log line) while the
API server is slow or away, instead of crash-looping.

Shutdown (``ConnectApp.begin_shutdown``, called by ``connect_proto._server.serve.serve`` when it
is cancelled): health turns NOT_SERVING, every watch stream ends with UNAVAILABLE, new
calls are refused with UNAVAILABLE, unary calls in flight get the grace period; then the
lifespan exits and closes the store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry, Gauge

from actions.config import Config
from actions.fanout import FanOut
from actions.metrics import FanOutMetrics, ServiceCollector, lag_histogram
from actions.service import SERVICE_DESCRIPTOR, ActionsService
from actions.store.base import Store
from connect_proto import (
    HEALTH_SERVICE,
    NOT_SERVING,
    SERVING,
    AccessLog,
    BearerAuth,
    ConnectApp,
    HealthService,
    HealthStatus,
    Readiness,
    RpcConfig,
    RpcMetrics,
    healthz_app,
    make_config,
    metrics_app,
    reflection_services,
)
from connect_proto import serve as serve_asgi

log = logging.getLogger(__name__)

OpenStore = Callable[[Config], Awaitable[Store]]

SERVICE_NAME: Final = SERVICE_DESCRIPTOR.full_name
WATCH_PATH: Final = f"/{SERVICE_NAME}/WatchForUpdates"
REQUEST_ID_HEADER: Final = "x-request-id"
# How often readiness is re-evaluated for grpc.health.v1 and the actions_ready gauge.
HEALTH_POLL_SECONDS: Final = 0.5


# --------------------------------------------------------------------------- stores


async def open_embedded_store(config: Config) -> Store:
    from actions.store.embedded import EmbeddedStore

    data_dir = config.resolved_data_dir()
    store = await EmbeddedStore.open(data_dir, config.namespace)
    log.info("embedded store: %s", getattr(store, "path", data_dir))
    return store


async def open_memory_store(config: Config) -> Store:
    from actions.store.embedded import EmbeddedStore

    return await EmbeddedStore.open(None, config.namespace)


async def open_kubernetes_store(config: Config) -> Store:
    from actions.store.kubernetes import ClientSettings, KubernetesStore

    settings = ClientSettings(
        kubeconfig=str(config.kubeconfig) if config.kubeconfig is not None else None,
        context=config.kube_context,
        in_cluster=config.in_cluster,
        qps=config.kube_qps,
        burst=config.kube_burst,
        connect_timeout=config.kube_connect_timeout,
        request_timeout=config.kube_request_timeout,
        watch_timeout=config.kube_watch_timeout,
    )
    store = await KubernetesStore.open(
        config.namespace,
        settings=settings,
        wait_for_sync=False,
    )
    log.info("kubernetes store: namespace %s (the first list runs in the background)",
             config.namespace)  # fmt: skip
    return store


STORE_OPENERS: Final[dict[str, OpenStore]] = {
    "embedded": open_embedded_store,
    "memory": open_memory_store,
    "kubernetes": open_kubernetes_store,
}


def store_ready(store: Store) -> tuple[bool, str]:
    """``Store.ready()``: ``(ok, why)``. Tolerates a plain bool (method or property) and
    a store without it (ready while open), so that test doubles stay small."""
    ready = getattr(store, "ready", None)
    if ready is None:
        return True, "ok"
    result = ready() if callable(ready) else ready
    if isinstance(result, tuple):
        return bool(result[0]), str(result[1])
    return bool(result), "ok" if result else "not ready"


def trio_task_count() -> int:
    """Trio tasks alive in this process; 0 outside a trio run."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return 0
    count = 0
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


# --------------------------------------------------------------------------- the app


@dataclass
class ActionsApplication:
    """The ASGI app plus the handles the runner and the tests use."""

    app: ConnectApp
    service: ActionsService
    config: Config
    metrics: FanOutMetrics
    registry: CollectorRegistry
    health: HealthStatus
    readiness: Readiness
    fanout: FanOut | None = field(default=None)
    store: Store | None = field(default=None)
    last_readiness: list[tuple[str, bool]] = field(default_factory=list)

    def begin_shutdown(self) -> None:
        """End every watch stream now (UNAVAILABLE) and refuse new calls, so that
        hypercorn's graceful shutdown does not wait for streams that never end."""
        self.app.begin_shutdown()

    def _on_shutdown(self) -> None:
        self.health.enter_graceful_shutdown()
        if self.fanout is not None:
            self.fanout.shutdown()


def build_app(config: Config, *, open_store: OpenStore | None = None) -> ActionsApplication:
    """``open_store`` defaults to the opener of ``config.store``."""
    config.validate()
    opener = open_store or STORE_OPENERS[config.store]
    service = ActionsService(namespace=config.namespace)
    registry = CollectorRegistry()
    counters = FanOutMetrics(observe_lag=lag_histogram(registry).observe)
    health = HealthStatus(overall=NOT_SERVING)
    health.set(SERVICE_NAME, NOT_SERVING)
    holder: list[ActionsApplication] = []

    def this() -> ActionsApplication:
        return holder[0]

    last_why: list[str] = ["ok"]

    def store_check() -> bool:
        store = this().store
        if store is None:
            return False
        ok, why = store_ready(store)
        if why != last_why[0]:
            # Once per change: a probe every few seconds must not flood the log.
            (log.info if ok else log.warning)("store readiness: %s", why)
            last_why[0] = why
        return ok

    def watch_check() -> bool:
        fanout = this().fanout
        return fanout is not None and fanout.running

    def accepting_check() -> bool:
        return not this().app.shutdown.draining

    readiness = Readiness(
        {"store": store_check, "watch": watch_check, "accepting": accepting_check}
    )
    registry.register(
        ServiceCollector(
            counters,
            fanout=lambda: this().fanout,
            store=lambda: this().store,
            readiness=lambda: this().last_readiness,
        )
    )

    async def run_store(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, run the fan-out on it, and bind the service; ``started()``
        once watches can be answered."""
        store = await opener(config)
        application = this()
        application.store = store
        try:
            fanout = FanOut(
                store,
                namespace=config.namespace,
                workers=config.watch_workers,
                buffer_size=config.watch_buffer_size,
                subscriber_buffer=config.subscriber_buffer_size,
                metrics=counters,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(fanout.run)
                if application.app.shutdown.draining:
                    fanout.shutdown()  # stopping already: refuse watches from the start
                service.bind(store, fanout)
                application.fanout = fanout
                await update_health()
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    fanout.shutdown()
                    service.bind(None, None)
                    application.fanout = None
        finally:
            application.store = None
            with trio.CancelScope(shield=True):
                await store.aclose()
            log.info("store closed")

    async def update_health() -> None:
        results = await readiness.results()
        this().last_readiness = results
        status = SERVING if all(ok for _, ok in results) else NOT_SERVING
        health.set("", status)
        health.set(SERVICE_NAME, status)

    async def follow_health() -> None:
        while True:
            await update_health()
            await trio.sleep(HEALTH_POLL_SECONDS)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_store)
            nursery.start_soon(follow_health)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    interceptors: list[Any] = []
    if config.auth_token_file is not None:
        interceptors.append(BearerAuth.from_file(config.auth_token_file))
    observers: list[Any] = [RpcMetrics(registry)]
    if config.access_log:
        observers.append(AccessLog())
    services: list[tuple[Any, object]] = [
        (SERVICE_DESCRIPTOR, service),
        (HEALTH_SERVICE, HealthService(health)),
    ]
    services += reflection_services([descriptor for descriptor, _ in services])
    app = ConnectApp(
        services,
        lifespan=lifespan,
        max_message_size=config.max_message_size,
        http_routes={
            "/healthz": healthz_app,
            "/readyz": readiness.app,
            "/metrics": metrics_app(registry),
        },
        interceptors=interceptors,
        observers=observers,
        request_id_header=REQUEST_ID_HEADER,
        max_streams=config.max_server_streams,
        max_streams_per_method=(
            {WATCH_PATH: config.max_watch_subscriptions}
            if config.max_watch_subscriptions is not None
            else None
        ),
        max_streams_per_connection=config.max_server_streams_per_connection,
        write_timeout=config.write_timeout,
    )
    application = ActionsApplication(
        app=app,
        service=service,
        config=config,
        metrics=counters,
        registry=registry,
        health=health,
        readiness=readiness,
    )
    holder.append(application)
    app.shutdown.on_begin(application._on_shutdown)
    # What a client can make the server hold: calls in flight, and the tasks behind them.
    Gauge("actions_open_calls", "RPCs accepted and not yet over.", registry=registry).set_function(
        lambda: app.open_calls
    )
    Gauge("actions_trio_tasks", "Trio tasks alive.", registry=registry).set_function(
        trio_task_count
    )
    return application


def hypercorn_config(config: Config) -> RpcConfig:
    """The listener: address, TLS/mTLS from files (reloaded on change), HTTP/2 limits."""
    return make_config(
        config.host,
        config.port,
        certfile=str(config.tls_cert_file) if config.tls_cert_file is not None else None,
        keyfile=str(config.tls_key_file) if config.tls_key_file is not None else None,
        ca_certs=str(config.tls_client_ca_file) if config.tls_client_ca_file is not None else None,
        require_client_cert=config.tls_require_client_cert,
        tls_reload_interval=config.tls_reload_interval,
        graceful_timeout=config.graceful_timeout,
        keep_alive_timeout=config.keep_alive_timeout,
        h2_max_concurrent_streams=config.max_streams_per_connection,
    )


async def serve(
    config: Config,
    *,
    open_store: OpenStore | None = None,
    graceful_timeout: float | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port (useful with
    port 0). On cancellation the watch streams end first, then hypercorn shuts down
    gracefully and the lifespan closes the store."""
    application = build_app(config, open_store=open_store)
    hconfig = hypercorn_config(config)
    if graceful_timeout is not None:
        hconfig.graceful_timeout = graceful_timeout
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_asgi, application.app, hconfig)
        task_status.started(port)
