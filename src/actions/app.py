"""The Actions Service as an ASGI app (the composition root), and ``serve`` to run it.

One port serves:

- ``flyteidl2.actions.ActionsService`` (Connect, gRPC, gRPC-Web), behind the optional
  bearer-token interceptor and the watch-subscription cap;
- ``grpc.health.v1.Health`` ("" and the service name: SERVING once ready) and gRPC
  reflection v1 and v1alpha, open without a token;
- plain HTTP ``/healthz`` (alive), ``/readyz`` (store reachable, watch fan-out running,
  not shutting down) and ``/metrics`` (Prometheus), also open.

``serve`` starts in an order that creates nothing before the configuration is known to
work: it binds the port, checks the store's location (``actions.preflight``: data
directory and database file; kubeconfig, CRD and namespace) and opens the store, each
failure a ``StartupError`` of one line; then hypercorn runs the app. The fan-out is
started in the app's lifespan (which opens the store itself when nobody did before),
before hypercorn answers anything: a watch is only answered once the fan-out follows the
store's change stream, so no change written after a watch's snapshot can be missed. The
Kubernetes store is opened without waiting for its first list (``wait_for_sync=False``),
so that the process is alive (``/healthz``) and says why it is not ready (``/readyz``, a
log line) while the API server is slow or away, instead of crash-looping; it never
creates the namespace.

The service and the fan-out use the store through ``ObservedStore``, so that a store
that stops reading or writing (a truncated database, a full disk) makes ``/readyz`` say
so and is logged once, not once per request.

Shutdown (``ConnectApp.begin_shutdown``, called by ``connect_proto.serve`` when it is
cancelled): health turns NOT_SERVING, every watch stream ends with UNAVAILABLE (its
stream scope is cancelled and the fan-out stops), new calls are refused with UNAVAILABLE,
unary calls in flight get the grace period; then the lifespan exits, unbinds the service
and closes the store.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio
from google.protobuf.descriptor import ServiceDescriptor
from hypercorn.config import Sockets
from prometheus_client import CollectorRegistry, Gauge

from actions import preflight
from actions.conditions import ConditionTimer
from actions.config import Config
from actions.console.service import (  # console
    MAX_WATCH_RUN_STREAMS,
    MAX_WATCH_RUNS_STREAMS,
    ConsoleService,
)
from actions.console.service import SERVICE_DESCRIPTOR as CONSOLE_SERVICE  # console
from actions.console.static import static_routes  # console
from actions.fanout import FanOut
from actions.metrics import FanOutMetrics, ServiceCollector, lag_histogram
from actions.preflight import StartupError
from actions.runservice import RunServiceCollector, RunServiceNotifier, notifier_for
from actions.service import SERVICE_DESCRIPTOR, ActionsService
from actions.store.base import Store
from actions.store.errors import StoreError
from actions.store_health import ObservedStore
from connect_proto import (
    HEALTH_SERVICE,
    NOT_SERVING,
    SERVING,
    AccessLog,
    BearerAuth,
    ConnectApp,
    FloodLimits,
    HealthService,
    HealthStatus,
    Interceptor,
    Observer,
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
    """The SQLite store in the data directory, after checking (without creating
    anything) that the directory and the database file are usable."""
    from actions.store.embedded import EmbeddedStore

    data_dir = config.resolved_data_dir()
    database = data_dir / f"{config.namespace}.sqlite3"
    await trio.to_thread.run_sync(preflight.check_data_dir, data_dir, database)
    try:
        store = await EmbeddedStore.open(data_dir, config.namespace)
    except (OSError, sqlite3.Error, StoreError) as exc:
        raise StartupError(preflight.describe_open_error(database, exc)) from exc
    log.info("embedded store: %s", store.path)
    return store


async def open_memory_store(config: Config) -> Store:
    from actions.store.embedded import EmbeddedStore

    return await EmbeddedStore.open(None, config.namespace)


async def open_kubernetes_store(config: Config) -> Store:
    """The TaskAction store, after checking that the kubeconfig works, that the API
    server serves the CRD and that the namespace exists (never creating it). An API
    server out of reach is not an error: the service starts, not ready, and says why."""
    from kubernetes import client

    from actions.store._kube_client import load_configuration
    from actions.store.kubernetes import ClientSettings, KubernetesStore

    settings = ClientSettings(
        kubeconfig=str(config.kubeconfig) if config.kubeconfig is not None else None,
        context=config.kube_context,
        in_cluster=config.in_cluster,
        qps=config.kube_qps,
        burst=config.kube_burst,
        connect_timeout=config.kube_connect_timeout,
        request_timeout=config.effective_request_timeout,
        watch_timeout=config.kube_watch_timeout,
    )
    try:
        configuration = await trio.to_thread.run_sync(load_configuration, settings)
    except StoreError as exc:
        where = (
            "in-cluster service account"
            if config.in_cluster
            else (
                f"kubeconfig {settings.kubeconfig or '~/.kube/config'}"
                + (f", context {config.kube_context!r}" if config.kube_context else "")
            )
        )
        raise StartupError(f"actions.kubernetes: {where}: {exc}") from exc
    if config.in_cluster or (config.in_cluster is None and settings.kubeconfig is None
                             and "KUBERNETES_SERVICE_HOST" in os.environ):  # fmt: skip
        context = "in-cluster"
    else:
        context = await trio.to_thread.run_sync(
            preflight.kube_context_name, settings.kubeconfig, settings.context
        )
    log.info("kubernetes: API server %s, context %s, namespace %s",
             configuration.host, context, config.namespace)  # fmt: skip
    # One try: an API server out of reach is not a reason to delay start-up (the store
    # retries in the background, and /readyz says why it is not ready meanwhile).
    configuration.retries = 0
    api_client = client.ApiClient(configuration)
    try:
        problem = await trio.to_thread.run_sync(
            preflight.check_kubernetes,
            f"{configuration.host} (context {context})",
            api_client,
            config.namespace,
            settings.timeouts,
            abandon_on_cancel=True,
        )
    finally:
        await trio.to_thread.run_sync(api_client.close)
    if problem is not None:
        log.warning("%s; starting anyway, not ready until it answers", problem)
    store = await KubernetesStore.open(
        config.namespace,
        settings=settings,
        create_namespace=False,
        wait_for_sync=False,
    )
    log.info("kubernetes store: namespace %s (the first list runs in the background)",
             config.namespace)  # fmt: skip
    return store


def store_label(config: Config, store: Store) -> str:
    """How log lines and /readyz name the store."""
    if config.store == "kubernetes":
        return f"kubernetes store (namespace {config.namespace})"
    path = getattr(store, "path", None)
    return "memory store" if path is None else f"embedded store {path}"


STORE_OPENERS: Final[dict[str, OpenStore]] = {
    "embedded": open_embedded_store,
    "memory": open_memory_store,
    "kubernetes": open_kubernetes_store,
}


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


class ActionsApplication:
    """Everything one served Actions Service is made of, wired once.

    ``app`` is the ASGI application to serve. Its lifespan (``lifespan``) opens the
    store, runs the fan-out on it and keeps grpc.health.v1 in step with readiness. While
    it runs, ``store`` and ``fanout`` are set; outside it they are None and the service
    answers UNAVAILABLE.
    """

    def __init__(self, config: Config, *, open_store: OpenStore | None = None) -> None:
        """``open_store`` defaults to the opener of ``config.store``."""
        config.validate()
        self.config = config
        self._open_store = open_store or STORE_OPENERS[config.store]
        self._opened: Store | None = None  # opened by ``open_store``, before the lifespan
        self.store: Store | None = None
        self.observed: ObservedStore | None = None  # what the service and fan-out use
        self.fanout: FanOut | None = None
        self.service = ActionsService(
            namespace=config.namespace, resolve_conditions=not config.executor_runs
        )
        self.notifier: RunServiceNotifier | None = None  # with actions.runServiceUrl
        # console: the read API, its streams on the fan-out
        self.console = ConsoleService(lambda: self.observed, lambda: self.fanout)
        self.registry = CollectorRegistry()
        self.metrics = FanOutMetrics(observe_lag=lag_histogram(self.registry).observe)
        self.health = HealthStatus(overall=NOT_SERVING)
        self.health.set(SERVICE_NAME, NOT_SERVING)
        self.readiness = Readiness(
            {
                "store": self._store_ready,
                "watch": self._watch_running,
                "accepting": self._accepting,
            }
        )
        # The readiness results of the last health poll, for the actions_ready gauge.
        self.last_readiness: list[tuple[str, bool]] = []
        self._store_why = "ok"  # last reason logged, so that a change is logged once
        self.registry.register(
            ServiceCollector(
                self.metrics,
                fanout=lambda: self.fanout,
                store=lambda: self.store,
                readiness=lambda: self.last_readiness,
            )
        )
        self.registry.register(RunServiceCollector(lambda: self.notifier))
        self.app = self._connect_app()
        self.app.shutdown.on_begin(self._on_shutdown)
        # What a client can make the server hold: calls in flight, and the tasks behind them.
        app = self.app
        Gauge("actions_open_calls", "RPCs accepted and not yet over.", registry=self.registry
              ).set_function(lambda: app.open_calls)  # fmt: skip
        Gauge("actions_trio_tasks", "Trio tasks alive.", registry=self.registry).set_function(
            trio_task_count
        )
        for key in config.ignored_keys():
            log.info("%s: set, but this service has no use for it; ignored", key)

    def _connect_app(self) -> ConnectApp:
        config = self.config
        interceptors: list[Interceptor] = []
        if config.auth_token_file is not None:
            interceptors.append(BearerAuth.from_file(config.auth_token_file))
        observers: list[Observer] = [RpcMetrics(self.registry)]
        if config.access_log:
            observers.append(AccessLog())
        services: list[tuple[ServiceDescriptor, object]] = [
            (SERVICE_DESCRIPTOR, self.service),
            (HEALTH_SERVICE, HealthService(self.health)),
            (CONSOLE_SERVICE, self.console),  # console
        ]
        services += reflection_services([descriptor for descriptor, _ in services])
        return ConnectApp(
            services,
            lifespan=self.lifespan,
            max_message_size=config.max_message_size,
            http_routes={
                "/healthz": healthz_app,
                "/readyz": self.readiness.app,
                "/metrics": metrics_app(self.registry),
                **static_routes(),  # console: the web console at / (static files)
            },
            interceptors=interceptors,
            observers=observers,
            request_id_header=REQUEST_ID_HEADER,
            max_streams=config.max_server_streams,
            max_streams_per_method={
                **(
                    {WATCH_PATH: config.max_watch_subscriptions}
                    if config.max_watch_subscriptions is not None
                    else {}
                ),
                # console: one WatchRun and one WatchRuns per open page
                f"/{CONSOLE_SERVICE.full_name}/WatchRun": MAX_WATCH_RUN_STREAMS,
                f"/{CONSOLE_SERVICE.full_name}/WatchRuns": MAX_WATCH_RUNS_STREAMS,
            },
            max_streams_per_connection=config.max_server_streams_per_connection,
            write_timeout=config.write_timeout,
        )

    # -- shutdown

    def begin_shutdown(self) -> None:
        """End every watch stream now (UNAVAILABLE) and refuse new calls, so that
        hypercorn's graceful shutdown does not wait for streams that never end."""
        self.app.begin_shutdown()

    def _on_shutdown(self) -> None:
        self.health.enter_graceful_shutdown()
        if self.fanout is not None:
            self.fanout.shutdown()

    # -- the store

    async def open_store(self) -> None:
        """Open the store now, before serving, so that a store that cannot be opened is
        a start-up error (``StartupError`` naming the path or API server and the
        cause) rather than a failed lifespan. The lifespan then uses this store;
        ``close_unused_store`` closes it when the lifespan never ran."""
        if self._opened is None:
            self._opened = await self._open_store(self.config)

    async def close_unused_store(self) -> None:
        store, self._opened = self._opened, None
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()

    # -- lifespan

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """The ASGI lifespan: serving starts once the store is open and the fan-out
        follows it; on exit the fan-out stops and the store is closed."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_store)
            nursery.start_soon(self._follow_health)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _run_store(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the store, run the fan-out on it, and bind the service; ``started()``
        once watches can be answered. Runs until cancelled, then unbinds and closes."""
        config = self.config
        store, self._opened = self._opened, None
        if store is None:
            store = await self._open_store(config)
        self.store = store
        observed = ObservedStore(store, store_label(config, store))
        self.observed = observed
        try:
            notifier = notifier_for(config.run_service_url, observed)
            fanout = FanOut(
                observed,
                namespace=config.namespace,
                workers=config.watch_workers,
                buffer_size=config.watch_buffer_size,
                subscriber_buffer=config.subscriber_buffer_size,
                metrics=self.metrics,
                observers=[
                    *([notifier.observe] if notifier is not None else []),
                    self.console.recent.observe,  # console: GetAction of a deleted action
                ],
                resyncs=[notifier.resync] if notifier is not None else [],
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(fanout.run)
                if notifier is not None:
                    await nursery.start(notifier.run)
                    self.notifier = notifier
                    log.info("reporting actions to the run service at %s", config.run_service_url)
                if not config.executor_runs:
                    # No executor resolves conditions: time them out here.
                    nursery.start_soon(ConditionTimer(observed).run)
                if self.app.shutdown.draining:
                    fanout.shutdown()  # stopping already: refuse watches from the start
                self.service.bind(observed, fanout)
                self.fanout = fanout
                await self._update_health()
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    fanout.shutdown()
                    self.service.bind(None, None)
                    self.fanout = None
        finally:
            self.store = self.observed = None
            self.notifier = None
            with trio.CancelScope(shield=True):
                await observed.aclose()
            log.info("store closed")

    async def _follow_health(self) -> None:
        while True:
            await self._update_health()
            await trio.sleep(HEALTH_POLL_SECONDS)

    async def _update_health(self) -> None:
        results = await self.readiness.results()
        self.last_readiness = results
        status = SERVING if all(ok for _, ok in results) else NOT_SERVING
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    # -- readiness checks

    def _store_ready(self) -> bool:
        if self.observed is None:
            return False
        ok, why = self.observed.ready()
        if why != self._store_why:
            # Once per change: a probe every few seconds must not flood the log. Not
            # ready is DEBUG: whoever found the cause (the backend, or ObservedStore)
            # has logged it already, naming it.
            (log.info if ok else log.debug)("store readiness: %s", why)
            self._store_why = why
        return ok

    def _watch_running(self) -> bool:
        return self.fanout is not None and self.fanout.running

    def _accepting(self) -> bool:
        return not self.app.shutdown.draining


def build_app(config: Config, *, open_store: OpenStore | None = None) -> ActionsApplication:
    """``ActionsApplication(config, open_store=open_store)``."""
    return ActionsApplication(config, open_store=open_store)


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
        write_timeout=config.write_timeout,
        h2_max_concurrent_streams=config.max_streams_per_connection,
        h2_flood_limits=FloodLimits(
            window=config.h2_flood_window,
            early_resets=config.h2_flood_early_resets,
            early_reset_share=config.h2_flood_early_reset_share,
            pings=config.h2_flood_pings,
            settings=config.h2_flood_settings,
            empty_data=config.h2_flood_empty_data,
        ),
    )


class _BoundListener(RpcConfig):
    """The listener configuration with its sockets bound already (``bind_listener``):
    hypercorn asks ``create_sockets`` for them after the lifespan started."""

    bound: Sockets | None = None

    def create_sockets(self) -> Sockets:
        if self.bound is None:
            return super().create_sockets()
        sockets, self.bound = self.bound, None
        return sockets


def bind_listener(config: Config, hconfig: RpcConfig) -> _BoundListener:
    """Bind the port now, before anything else is opened or created; raises
    ``StartupError`` naming the address and the cause (in use, privileged, not ours)."""
    listener = _BoundListener()
    listener.__dict__.update(vars(hconfig))
    try:
        listener.bound = hconfig.create_sockets()
    except OSError as exc:
        raise preflight.bind_error(config.host, config.port, exc) from None
    return listener


def _close_sockets(sockets: Sockets | None) -> None:
    if sockets is not None:
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            sock.close()


async def serve(
    config: Config,
    *,
    open_store: OpenStore | None = None,
    graceful_timeout: float | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port (useful with
    port 0). On cancellation the watch streams end first, then hypercorn shuts down
    gracefully and the lifespan closes the store.

    Start-up runs in the order that creates nothing before the configuration is known
    to work: bind the port, check and open the store, then answer. Each step that fails
    raises ``StartupError`` (one line naming the port, path or API server and why)."""
    application = ActionsApplication(config, open_store=open_store)
    hconfig = hypercorn_config(config)
    if graceful_timeout is not None:
        hconfig.graceful_timeout = graceful_timeout
    listener = bind_listener(config, hconfig)
    try:
        await application.open_store()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_asgi, application.app, listener)
            task_status.started(port)
    finally:
        _close_sockets(listener.bound)  # still ours when hypercorn never took them
        await application.close_unused_store()
