"""Misbehaving HTTP/2 peers must cost one connection, never the server process.

hypercorn 0.18's trio worker lets any exception escape a connection's task group into
``trio.serve_listeners``, which ends the whole worker (one-process: the service). Two
such exceptions are reachable by any client:

- ``KeyError`` in ``H2Protocol._handle_events`` for DATA on a stream hypercorn already
  forgot (pgjones/hypercorn#329; PRs #312/#334/#365 unmerged);
- ``trio.BusyResourceError`` when the peer-close path's unlocked ``send_eof`` races a
  ``send_all`` that flushes responses.

(docs/hypercorn-upstream.md, issues 1 and 5; test_hypercorn_fixes.py shows both on stock
hypercorn.) Here they are checked against the server as a separate process, with a raw
``h2`` client over a socket. Each test uses a private server (``fresh_server``).
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.exceptions
from servers import RunningServer, require_tool
from testsvc.v1 import test_pb2


def _envelope(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def _open(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return sock, conn


def _headers(path: str, content_type: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1"),
        (":path", path),
        ("content-type", content_type),
    ]


def _check_alive(server: RunningServer) -> None:
    """Fail with the server log when the process ended (give a dying one 0.3 s to go)."""
    try:
        server.process.wait(0.3)
    except subprocess.TimeoutExpired:
        return
    raise AssertionError(f"server exited:\n{server.log_text()[-4000:]}")


def _reset_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _streams_then_reset(port: int, streams: int = 64) -> None:
    """Start many server-streaming calls, read a little, then RST the TCP connection."""
    try:
        sock, conn = _open(port)
    except OSError:
        return  # refused: the caller's liveness check reports why
    request = _envelope(test_pb2.CountRequest(count=30).SerializeToString())
    try:
        for _ in range(streams):
            sid = conn.get_next_available_stream_id()
            path = "/testsvc.v1.TestService/Count"
            conn.send_headers(sid, _headers(path, "application/connect+proto"))
            conn.send_data(sid, request, end_stream=True)
        sock.sendall(conn.data_to_send())
        sock.recv(1000)  # responses are being written now
    except OSError:
        pass  # the server may already have dropped us: that is allowed
    finally:
        _reset_close(sock)


def _assert_serving(server: RunningServer) -> None:
    _check_alive(server)
    sock, conn = _open(server.port)
    try:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, _headers("/testsvc.v1.TestService/Echo", "application/proto"))
        conn.send_data(sid, test_pb2.EchoRequest(message="ok").SerializeToString(), end_stream=True)
        sock.sendall(conn.data_to_send())
        status = None
        deadline = time.monotonic() + 5
        while status is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            assert data, "connection closed without a response"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
        assert status == b"200"
    finally:
        sock.close()


def test_client_reset_during_responses(fresh_server: RunningServer) -> None:
    for _ in range(30):
        _streams_then_reset(fresh_server.port)
        if fresh_server.process.poll() is not None:
            _check_alive(fresh_server)
    _assert_serving(fresh_server)


def test_body_after_early_answer(fresh_server: RunningServer) -> None:
    """DATA keeps arriving after the server answered (404 for an unknown method)."""
    for _ in range(10):
        _check_alive(fresh_server)
        sock, conn = _open(fresh_server.port)
        try:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, _headers("/nope.v1.Nope/Nope", "application/proto"))
            sock.sendall(conn.data_to_send())
            time.sleep(0.05)  # the 404 is sent and the stream forgotten meanwhile
            for _ in range(4):
                conn.send_data(sid, b"\0" * 8000)
                sock.sendall(conn.data_to_send())
            conn.end_stream(sid)
            sock.sendall(conn.data_to_send())
            time.sleep(0.05)
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()
        _check_alive(fresh_server)
    _assert_serving(fresh_server)


def test_load_generator_disconnect(fresh_server: RunningServer, tmp_path: Path) -> None:
    """h2load ends a timed run by closing connections with calls in flight.

    That reaches hypercorn's trio ``TCPServer._close``: its ``send_eof`` holds the
    socket's send-conflict detector across a checkpoint, the connection's send task
    calls ``send_all`` meanwhile, and ``trio.BusyResourceError`` (not caught by
    ``protocol_send``) ends the server. Needs Debian ``nghttp2-client``, which
    scripts/test.sh installs; skipped only outside CI.
    """
    h2load = shutil.which("h2load")
    require_tool("h2load", h2load is not None, "apt-get install nghttp2-client")
    assert h2load is not None
    body = tmp_path / "echo.bin"
    body.write_bytes(test_pb2.EchoRequest(message="hello").SerializeToString())
    url = f"{fresh_server.url}/testsvc.v1.TestService/Echo"
    argv = [h2load, "-c", "4", "-m", "16", "-D", "1", "-d", str(body)]
    for _ in range(8):
        subprocess.run(
            [*argv, "-H", "content-type: application/proto", url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        _check_alive(fresh_server)
    _assert_serving(fresh_server)
