"""One trio worker: hypercorn 0.18's ``worker_serve`` with ``RpcTCPServer`` connections.

hypercorn's loop (lifespan start-up, listeners, graceful shutdown, lifespan shutdown)
with one change: each connection is an ``RpcTCPServer`` built with ``ServerOptions``.
hypercorn has no way to choose the connection class, hence the copy. QUIC (HTTP/3)
listeners are not supported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from random import randint

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr

from connect_proto._server.compat import check_supported
from connect_proto._server.protocol import ServerOptions
from connect_proto._server.tcp_server import RpcTCPServer


async def worker_serve(
    app: AppWrapper,
    config: Config,
    *,
    options: ServerOptions | None = None,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (or the worker is told to terminate);
    ``task_status.started`` gets the bound addresses (``http://host:port``)."""
    check_supported()
    options = options or ServerOptions()
    config.set_statsd_logger_class(StatsdLogger)
    if config.quic_bind:
        raise ValueError("QUIC (quic_bind) is not supported by this server")

    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            if sockets is None:
                sockets = config.create_sockets()
                for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                    sock.listen(config.backlog)

            ssl_context = config.create_ssl_context()
            listeners: list[trio.SSLListener[trio.SocketStream] | trio.SocketListener] = []
            binds = []
            for sock in sockets.secure_sockets:
                listeners.append(
                    trio.SSLListener(
                        trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                        ssl_context,  # type: ignore[arg-type]
                        https_compatible=True,
                    )
                )
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"https://{bind}")
                await config.log.info(f"Running on https://{bind} (CTRL + C to quit)")
            for sock in sockets.insecure_sockets:
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                binds.append(f"http://{bind}")
                await config.log.info(f"Running on http://{bind} (CTRL + C to quit)")

            task_status.started(binds)
            connection = partial(
                RpcTCPServer,
                app,
                config,
                context,
                ConnectionState(lifespan_state.copy()),
                options=options,
            )
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            connection,
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


__all__ = ["worker_serve"]
