"""Run an ASGI app on hypercorn's trio worker with connect_proto's connection classes.

Nothing is patched: ``serve`` runs its own worker loop (``worker.worker_serve``) whose
connections are ``RpcTCPServer``s (tcp_server.py, protocol.py, h2_connection.py), after
checking that the installed hypercorn and h2 are the versions those were written for
(compat.py). docs/hypercorn-upstream.md lists the hypercorn bugs they work around.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from connect_proto._server.compat import check_supported
from connect_proto._server.flood import FloodLimits
from connect_proto._server.protocol import ServerOptions
from connect_proto._server.tls import ReloadingTLS
from connect_proto._server.worker import worker_serve

log = logging.getLogger("connect_proto._server.serve")

# hypercorn closes a keep-alive connection after 1,000 requests by default; RPC clients
# hold long-lived connections, so raise it far beyond any realistic count.
KEEP_ALIVE_MAX_REQUESTS = 1_000_000_000


class RpcConfig(Config):
    """hypercorn's Config, with our own reloadable TLS context and a cached Date.

    hypercorn calls ``create_ssl_context`` once; returning the ``ReloadingTLS`` context
    lets certificate rotation reach new connections without a restart. ``tls`` None
    (no certfile) means plain TCP, exactly as with a stock Config.

    hypercorn asks ``response_headers`` for every response; the Date it holds changes
    once a second (RFC 9110, 6.6.1), so it is formatted once a second, not per response.
    """

    tls: ReloadingTLS | None = None
    tls_reload_interval: float | None = 5.0
    h2_flood_limits: FloodLimits = FloodLimits()
    write_timeout: float = 30.0

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is not None:
            return self.tls.context
        return super().create_ssl_context()

    _headers_second: int = -1
    _headers_by_protocol: dict[str, list[tuple[bytes, bytes]]]

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._headers_second:
            self._headers_by_protocol = {}
            self._headers_second = second
        headers = self._headers_by_protocol.get(protocol)
        if headers is None:
            headers = self._headers_by_protocol[protocol] = super().response_headers(protocol)
        return list(headers)  # the caller may extend it


def make_config(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    ca_certs: str | None = None,
    require_client_cert: bool = False,
    tls_reload_interval: float | None = 5.0,
    keep_alive_timeout: float = 75.0,
    graceful_timeout: float = 5.0,
    h2_max_concurrent_streams: int = 1000,
    h2_flood_limits: FloodLimits | None = None,
    write_timeout: float = 30.0,
    access_log: bool = False,
) -> RpcConfig:
    """A hypercorn Config for serving RPCs.

    Port 0 binds an ephemeral port; ``serve`` reports the real one. With ``certfile`` (and
    ``keyfile``) the listener speaks TLS and offers h2 then http/1.1 via ALPN; otherwise
    plain HTTP/1.1 with h2c prior knowledge. ``ca_certs`` is the CA client certificates
    are verified against (mTLS); ``require_client_cert`` makes one mandatory. The
    certificate files are checked every ``tls_reload_interval`` seconds and reloaded
    when they change (None: never). ``h2_max_concurrent_streams`` is the HTTP/2
    SETTINGS_MAX_CONCURRENT_STREAMS each connection advertises; ``h2_flood_limits`` the
    per-connection budgets for resets, PINGs, SETTINGS and empty DATA (flood.py).
    ``write_timeout``: a socket write that makes no progress for this many seconds (the
    client stopped reading) closes the connection.
    """
    if h2_max_concurrent_streams < 1:
        raise ValueError("h2_max_concurrent_streams must be >= 1")
    if not write_timeout > 0:
        raise ValueError("write_timeout must be > 0")
    config = RpcConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.alpn_protocols = ["h2", "http/1.1"]
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.keep_alive_timeout = keep_alive_timeout
    config.graceful_timeout = graceful_timeout
    config.h2_max_concurrent_streams = h2_max_concurrent_streams
    if h2_flood_limits is not None:
        config.h2_flood_limits = h2_flood_limits
    config.write_timeout = write_timeout
    config.accesslog = "-" if access_log else None
    # Through logging, so applications and tests decide what is shown.
    config.errorlog = logging.getLogger("hypercorn.error")
    if certfile is not None:
        if keyfile is None:
            raise ValueError("certfile needs keyfile")
        # hypercorn decides "TLS or not" from these two; the context comes from tls.
        config.certfile = certfile
        config.keyfile = keyfile
        config.ca_certs = ca_certs
        config.tls = ReloadingTLS(
            certfile,
            keyfile,
            client_ca=ca_certs,
            require_client_cert=require_client_cert,
            alpn_protocols=config.alpn_protocols,
            ciphers=config.ciphers,
        )
        config.tls_reload_interval = tls_reload_interval
    elif require_client_cert or ca_certs is not None:
        raise ValueError("client certificates need TLS: give certfile and keyfile")
    return config


class _PortStatus:
    """Adapts hypercorn's ``started(binds)`` to ``started(port)``."""

    def __init__(self, inner: trio.TaskStatus[int]) -> None:
        self._inner = inner

    def started(self, binds: list[str] | None = None) -> None:
        bind = (binds or ["http://0:0"])[0]
        self._inner.started(int(bind.rsplit(":", 1)[1]))


async def serve(
    app: Any,
    config: Config,
    *,
    coalesce_writes: bool = True,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started`` gets the bound port.

    ``coalesce_writes`` False writes each HTTP/2 frame batch with its own ``send_all``,
    as stock hypercorn does (coalescer.py; for benchmarks). Raises
    ``UnsupportedLibraryError`` at once when hypercorn or h2 is not a verified version.

    hypercorn reports the addresses it actually bound (``getsockname``), so binding
    port 0 in ``make_config`` yields a real ephemeral port here. Cancelling this task
    shuts down gracefully: first ``app.begin_shutdown()`` (when the app has one, as
    ``ConnectApp`` does) ends open streams with UNAVAILABLE and refuses new calls; then
    hypercorn stops accepting, gives in-flight requests ``graceful_timeout``, and exits
    the lifespan context. With an ``RpcConfig`` using TLS, certificate files are
    watched for changes while serving.
    """
    check_supported()
    options = ServerOptions(
        coalesce_writes=coalesce_writes,
        flood_limits=getattr(config, "h2_flood_limits", FloodLimits()),
        write_timeout=getattr(config, "write_timeout", RpcConfig.write_timeout),
    )
    shutdown = trio.Event()
    # Duck-typed so that wrapping middleware can forward it; looked up once, here.
    begin_shutdown = getattr(app, "begin_shutdown", None)
    # hypercorn is shielded from our caller's cancellation so that it can run its own
    # graceful shutdown (including ASGI lifespan shutdown); a deadline bounds it.
    server_scope = trio.CancelScope(shield=True)

    async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await worker_serve(
                wrap_app(app, config.wsgi_max_body_size, None),
                config,
                options=options,
                shutdown_trigger=shutdown.wait,
                task_status=_PortStatus(task_status),
            )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run)
        tls = config.tls if isinstance(config, RpcConfig) else None
        interval = config.tls_reload_interval if isinstance(config, RpcConfig) else None
        if tls is not None and interval:
            nursery.start_soon(tls.watch, interval)
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            if callable(begin_shutdown):
                try:
                    begin_shutdown()
                except Exception:
                    log.exception("begin_shutdown failed")
            shutdown.set()
            server_scope.deadline = trio.current_time() + config.graceful_timeout + 5.0
