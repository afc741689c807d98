"""A raw HTTP/2 client for abuse tests and the soak: an ``h2`` state machine over a
blocking socket, so a test can do what a well-behaved client library never would
(advertise a zero flow-control window, stop reading, reset or drop the connection with
calls in flight).
"""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.request
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
import h2.settings

GRPC = "application/grpc+proto"
CONNECT_PROTO = "application/proto"


def envelope(payload: bytes) -> bytes:
    """One gRPC / Connect streaming message frame, uncompressed."""
    return struct.pack(">BI", 0, len(payload)) + payload


class RawH2:
    """One HTTP/2 connection. ``window`` is the SETTINGS_INITIAL_WINDOW_SIZE advertised to
    the server (0: the server may send HEADERS but no DATA)."""

    def __init__(self, port: int, *, window: int | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def call(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = GRPC,
        headers: Iterable[tuple[str, str]] = (),
        end: bool = True,
    ) -> int:
        """Start a call (gRPC: ``body`` is enveloped here); return its stream id."""
        sid = self.conn.get_next_available_stream_id()
        grpc = content_type.startswith("application/grpc")
        head = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", path),
            ("content-type", content_type),
            *([("te", "trailers")] if grpc else []),
            *headers,
        ]
        self.conn.send_headers(sid, head)
        self.conn.send_data(sid, envelope(body) if grpc else body, end_stream=end)
        return sid

    def responses(self, seconds: float = 5.0) -> dict[int, dict[bytes, bytes]]:
        """Read until the server goes quiet for ``seconds``: headers and trailers by stream."""
        seen: dict[int, dict[bytes, bytes]] = {}
        self.sock.settimeout(seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    seen.setdefault(event.stream_id, {}).update(dict(event.headers))
            self.flush()
        return seen

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match is None:
            continue
        label_text = match.group(1) or ""
        if all(f'{key}="{value}"' in label_text for key, value in labels.items()):
            total += float(match.group(2))
    return total


def open_calls(port: int) -> float:
    """Calls accepted and not yet finished, from the RPC metrics."""
    text = scrape(port)
    return metric_sum(text, "rpc_server_started_total") - metric_sum(
        text, "rpc_server_handled_total"
    )
