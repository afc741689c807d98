"""Run an ASGI app under hypercorn's trio worker, programmatically."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

# hypercorn closes a keep-alive connection after 1,000 requests by default; RPC clients
# hold long-lived connections, so raise it far beyond any realistic count.
KEEP_ALIVE_MAX_REQUESTS = 1_000_000_000


def make_config(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    ca_certs: str | None = None,
    require_client_cert: bool = False,
    keep_alive_timeout: float = 75.0,
    graceful_timeout: float = 5.0,
    h2_max_concurrent_streams: int = 1000,
    access_log: bool = False,
) -> Config:
    """A hypercorn Config for serving RPCs.

    Port 0 binds an ephemeral port; ``serve`` reports the real one. With ``certfile`` the
    listener speaks TLS and offers h2 then http/1.1 via ALPN; otherwise plain HTTP/1.1
    with h2c prior knowledge.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.alpn_protocols = ["h2", "http/1.1"]
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.keep_alive_timeout = keep_alive_timeout
    config.graceful_timeout = graceful_timeout
    config.h2_max_concurrent_streams = h2_max_concurrent_streams
    config.accesslog = "-" if access_log else None
    # Through logging, so applications and tests decide what is shown.
    config.errorlog = logging.getLogger("hypercorn.error")
    if certfile is not None:
        config.certfile = certfile
        config.keyfile = keyfile
        config.ca_certs = ca_certs
        if require_client_cert:
            config.verify_mode = ssl.CERT_REQUIRED
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
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started`` gets the bound port.

    hypercorn reports the addresses it actually bound (``getsockname``), so binding
    port 0 in ``make_config`` yields a real ephemeral port here. Cancelling this task
    shuts down gracefully: in-flight requests get ``graceful_timeout``, then the
    lifespan context is exited (hypercorn runs lifespan shutdown).
    """
    shutdown = trio.Event()
    # hypercorn is shielded from our caller's cancellation so that it can run its own
    # graceful shutdown (including ASGI lifespan shutdown); a deadline bounds it.
    server_scope = trio.CancelScope(shield=True)

    async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await hypercorn_serve(
                app,
                config,
                shutdown_trigger=shutdown.wait,
                task_status=_PortStatus(task_status),  # type: ignore[arg-type]
            )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run)
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            shutdown.set()
            server_scope.deadline = trio.current_time() + config.graceful_timeout + 5.0
