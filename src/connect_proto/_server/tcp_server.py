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
- A connection's clean-up (the protocol's handling of ``Closed``: every stream told of
  the disconnect) runs in the connection's own closer task, shielded and bounded by
  ``CLOSE_TIMEOUT``. hypercorn ran it in whichever task found the socket broken, often
  an app task inside its send, where the call's deadline or write timeout could cancel
  it part-way: streams already forgotten were never sent ``http.disconnect`` and their
  handlers (watches) ran forever (issue 10).
- When the read loop ends, the keep-alive timer stops: it held the connection's task
  group, its socket and two tasks open for ``keep_alive_timeout`` after the client
  closed an idle connection (issue 11).
- Each socket write makes progress within ``write_timeout`` (per ``WRITE_CHUNK``) or
  the connection is closed: hypercorn writes shielded, so a client that stopped reading
  TCP held an HTTP/1.1 response (and its handler) beyond any app timeout (issue 12).
- A write whose caller is cancelled while it waits for the send lock (a call's deadline
  passing while another write is on the socket) still goes out, in its turn: hypercorn
  dropped it, though h2 or h11 had already counted its bytes as sent, so the client got a
  stream's trailers without its HEADERS, or a corrupt HPACK context (issue 15).
- Its task group and keep-alive timer are ``RpcTaskGroup`` and ``KeepAliveTimer``
  (task_group.py): fewer trips through the scheduler per request.
"""

from __future__ import annotations

from math import inf

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr

from connect_proto._server.protocol import RpcProtocolWrapper, ServerOptions
from connect_proto._server.task_group import KeepAliveTimer, RpcTaskGroup

# How long closing an idle connection waits for its GOAWAY to be written.
GOODBYE_TIMEOUT = 1.0
# How long the clean-up of a closed connection may take (telling its streams).
CLOSE_TIMEOUT = 5.0
# Bytes per socket write bounded by the write timeout: "no progress for write_timeout".
WRITE_CHUNK = 64 * 1024


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
        self.idle_task = KeepAliveTimer()  # type: ignore[assignment]
        self.options = options
        self.protocol: RpcProtocolWrapper  # type: ignore[assignment]
        self._lost = trio.Event()  # the connection is over: the closer cleans up
        self._broken = False  # a write failed or stalled: later writes are dropped
        self._reading = True  # the read loop has not ended
        self._receive_scope: trio.CancelScope | None = None

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
            async with RpcTaskGroup() as task_group:
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
                task_group.spawn(self._closer)
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    def _connection_lost(self) -> None:
        """Hand the clean-up to the closer task and stop the read loop. Synchronous, so
        no cancel can land between finding the connection gone and saying so."""
        self._lost.set()
        if self._receive_scope is not None:
            self._receive_scope.cancel()

    async def _closer(self) -> None:
        await self._lost.wait()
        # Never part-way: a stream forgotten but not told would run forever.
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await self.protocol.handle(Closed())

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            # Shielded, as hypercorn writes (bytes half-written would break the connection
            # for every stream on it), and from the wait for the lock on: h2 (or h11)
            # counted these bytes as sent when it produced them, so a caller's cancel (a
            # call's deadline) must not drop them (issue 15). The wait has an end: each
            # write ahead makes progress within the write timeout or closes the connection.
            with trio.CancelScope(shield=True):
                written = await self._write(event.data)
            if not written:
                self._connection_lost()
            # A caller's cancel lands once its bytes are out (or dropped with the broken
            # connection): an app that writes in a loop must still hear of it.
            await trio.lowlevel.checkpoint_if_cancelled()
        elif isinstance(event, Closed):
            await self._close()
            self._connection_lost()
        elif isinstance(event, Updated):
            if not event.idle:
                await self.idle_task.stop()
            elif self._reading:  # after the read loop no timer is needed (or waited for)
                await self.idle_task.restart(self._task_group, self._idle_timeout)

    async def _write(self, data: bytes) -> bool:
        """Write ``data`` after the writes before it; False when the connection is or
        becomes broken (these bytes cannot arrive; later writes are dropped)."""
        async with self.send_lock:
            if self._broken:
                return False  # the connection is closing
            try:
                if await self._send_all(data):
                    return True
                # No progress for the write timeout: hypercorn writes shielded, so a
                # client that stopped reading TCP would hold the connection and its
                # handlers for good.
                await trio.aclose_forcefully(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except trio.BusyResourceError:
                pass  # only _close() sends outside the lock: the connection is closing
            self._broken = True
            return False

    async def _send_all(self, data: bytes) -> bool:
        """Write ``data``; False when a ``WRITE_CHUNK`` made no way in ``write_timeout``."""
        view = memoryview(data)
        timeout = self.options.write_timeout
        for start in range(0, len(view), WRITE_CHUNK):
            with trio.move_on_after(timeout) as scope:
                await self.stream.send_all(view[start : start + WRITE_CHUNK])
            if scope.cancelled_caught:
                return False
        return True

    async def _read_data(self) -> None:
        # hypercorn's loop; the clean-up goes to the closer, the keep-alive timer stops.
        try:
            read_timeout = self.config.read_timeout or inf
            while not self._lost.is_set():
                # One scope per read, for both ways it ends early: the connection found
                # lost (``_connection_lost`` cancels it) and read_timeout passing.
                scope = self._receive_scope = trio.CancelScope(
                    deadline=trio.current_time() + read_timeout
                )
                with scope:
                    try:
                        data = await self.stream.receive_some(MAX_RECV)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        break
                self._receive_scope = None
                if self._lost.is_set() or scope.cancelled_caught:
                    break
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
        finally:
            self._receive_scope = None
            self._reading = False
            self._connection_lost()
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()

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
