"""A raw HTTP/2 client for abuse tests and the soak: an ``h2`` state machine over a
blocking socket, so a test can do what a well-behaved client library never would
(advertise a zero flow-control window, stop reading, reset or drop the connection with
calls in flight).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

GRPC = "application/grpc+proto"
CONNECT_PROTO = "application/proto"
CONNECT_STREAM = "application/connect+proto"


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

    def responses(
        self, seconds: float = 5.0, until_ended: Iterable[int] = ()
    ) -> dict[int, dict[bytes, bytes]]:
        """Read until the streams in ``until_ended`` have all ended (or, without any,
        until the server goes quiet) or ``seconds`` pass: headers and trailers by
        stream. Received DATA is acknowledged, so the server's window stays open."""
        self.flush()
        seen: dict[int, dict[bytes, bytes]] = {}
        waiting = set(until_ended)
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
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    waiting.discard(event.stream_id)
            self.flush()
            if until_ended and not waiting:
                break
        return seen

    def cancel(self, stream_id: int) -> None:
        """Reset one stream (RST_STREAM CANCEL), as a client abandoning a call does."""
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.flush()

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


class ServiceProcess:
    """``actions-service serve --memory`` on a free port, in its own process, logging to
    ``log``; ``env`` adds ``ACTIONS_*`` settings. A context manager; stopped with SIGTERM
    (then killed) on exit."""

    LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

    def __init__(self, log: Path, env: dict[str, str] | None = None, *args: str) -> None:
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> ServiceProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "actions.cli", "serve", "--port", "0", "--memory",
                 *self.args],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = self.LISTENING.search(self.log_text())
            if found:
                self.port = int(found.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"actions-service did not start:\n{self.log_text()[-4000:]}")

    def __exit__(self, *_: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_until(probe: Callable[[], float], target: float = 0, seconds: float = 15) -> float:
    """Poll ``probe`` until it returns at most ``target`` or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    value = probe()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.1)
        value = probe()
    return value


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
