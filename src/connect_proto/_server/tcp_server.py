"""hypercorn 0.18's trio ``TCPServer`` (one per connection) running our protocols.

Differences from hypercorn, each in docs/hypercorn-upstream.md:

- ``run`` builds an ``RpcProtocolWrapper`` (our HTTP/1.1 and HTTP/2 protocols).
- ``protocol_send``: closing a connection (``_close``: ``send_eof``) runs outside the
  send lock, so a concurrent flush gets ``trio.BusyResourceError``, which nothing caught:
  the exception ended the whole server (issue 5). It is treated like the broken socket
  it is about to be.
- When the server shuts down, an idle connection is closed at once (after GOAWAY on
  HTTP/2); one whose request is being read or answered is left to finish and close
  after its answer (issue 7).
"""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr

from connect_proto._server.protocol import RpcProtocolWrapper, ServerOptions

# How long closing an idle connection waits for its GOAWAY to be written.
GOODBYE_TIMEOUT = 1.0


class RpcTCPServer(TCPServer):
    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        stream: trio.SSLStream[trio.SocketStream],
        *,
        options: ServerOptions,
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.options = options
        self.protocol: RpcProtocolWrapper  # type: ignore[assignment]

    async def run(self) -> None:
        # hypercorn's TCPServer.run, with RpcProtocolWrapper.
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return  # handshake failed
            alpn_protocol = self.stream.selected_alpn_protocol()
            socket = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # not TLS
            alpn_protocol = "http/1.1"
            socket = self.stream.socket
            ssl = False

        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = RpcProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                    options=self.options,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        try:
            await super().protocol_send(event)
        except trio.BusyResourceError:
            # Only _close() touches the socket outside the send lock, so the connection
            # is closing: the same outcome as a broken socket.
            await self.protocol.handle(Closed())

    async def _initiate_server_close(self) -> None:
        # Runs (shielded) when the keep-alive timeout passes or the server shuts down.
        protocol = self.protocol.protocol
        if self.context.terminated.is_set() and protocol.busy:
            return  # a request is in progress; it closes the connection after its answer
        with trio.move_on_after(GOODBYE_TIMEOUT):  # a peer that does not read gets none
            await protocol.goodbye()
        await self.protocol.handle(Closed())
        await self._close()


__all__ = ["RpcTCPServer"]
