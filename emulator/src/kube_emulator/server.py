"""The listening socket: a threaded HTTP server that tracks its connections.

Tracking matters for the fault knobs and for clean shutdown: refusing connections closes
the listener *and* every open connection (as a crashed apiserver would), and stopping joins
every connection thread so tests can check nothing leaked.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from http.server import HTTPServer
from typing import TYPE_CHECKING, Any

from .handler import ApiHandler

if TYPE_CHECKING:
    from .emulator import Core

log = logging.getLogger("kube_emulator")


class ApiServer(socketserver.ThreadingMixIn, HTTPServer):
    """One thread per connection; carries the emulator (``core``) its handlers serve."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    block_on_close = False

    def __init__(self, address: tuple[str, int], core: Core) -> None:
        self.core = core
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, ApiHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN, which can take seconds; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the client reset or abandoned the connection: nothing to report
        log.error("error serving %s", client_address, exc_info=exc)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="kube-emulator-conn",
            daemon=True,
        )
        with self._conns_lock:
            self._conns[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.pop(request, None)

    def drop_connections(self) -> list[threading.Thread]:
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _thread in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [thread for _sock, thread in conns]

    def connection_count(self) -> int:
        with self._conns_lock:
            return len(self._conns)


class Listener:
    """Owns one bound server at a time; can stop listening and come back on the same port."""

    def __init__(self, core: Core, host: str, port: int) -> None:
        self.core = core
        self.host = host
        self.port = port
        self._server: ApiServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._listening = False

    @property
    def listening(self) -> bool:
        """True from bind to the close of the listening socket."""
        return self._listening

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            server = ApiServer((self.host, self.port), self.core)
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="kube-emulator-accept",
                daemon=True,
            )
            self._thread.start()
            self._listening = True

    def stop(self, join_timeout: float = 5.0) -> None:
        """Stop accepting, drop every open connection and wait for their threads."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._listening = False
        if thread is not None:
            thread.join(join_timeout)
        threads = server.drop_connections()
        self.core.store.kick()  # wake idle watch streams so they notice the dead socket
        for conn_thread in threads:
            conn_thread.join(join_timeout)

    def connection_count(self) -> int:
        server = self._server
        return server.connection_count() if server else 0
