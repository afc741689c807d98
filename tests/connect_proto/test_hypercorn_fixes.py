"""The server's hypercorn fixes (connect_proto._server): unit tests, the version gate, and
for each hypercorn bug a raw-h2 test run against stock hypercorn (an expected failure: it
XPASSes, and fails, once upstream fixes the bug) and against our server."""

from __future__ import annotations

import inspect
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import priority
import pytest
import trio
from h2_peer import (
    OURS,
    STOCK,
    Peer,
    Server,
    connect_headers,
    grpc_headers,
    make_app,
    of_type,
    plain_app,
    stock_and_ours,
    unary_ok,
)
from hypercorn.protocol.h2 import H2Protocol
from servers import require_tool
from testsvc.v1 import test_pb2

from connect_proto._server import compat
from connect_proto._server.coalescer import WriteCoalescer
from connect_proto._server.h2_connection import RpcH2Connection
from connect_proto._server.scheduler import FairScheduler
from connect_proto._server.serve import make_config, serve
from connect_proto._wire.envelope import encode_envelope

ECHO = "/testsvc.v1.TestService/Echo"


def test_fair_scheduler_round_robin_block_unblock_remove() -> None:
    s = FairScheduler()
    for sid in (1, 3, 5):
        s.insert_stream(sid)
    assert [next(s) for _ in range(6)] == [1, 3, 5, 1, 3, 5]
    s.block(3)
    assert [next(s) for _ in range(4)] == [1, 5, 1, 5]
    s.unblock(3)
    s.unblock(3)  # idempotent: never queued twice
    assert sorted(next(s) for _ in range(3)) == [1, 3, 5]
    s.remove_stream(1)
    assert set(next(s) for _ in range(4)) == {3, 5}
    s.block(3)
    s.block(5)
    with pytest.raises(priority.DeadlockError):
        next(s)
    with pytest.raises(priority.DuplicateStreamError):
        s.insert_stream(3)
    for op in (s.block, s.unblock, s.remove_stream, s.reprioritize):
        with pytest.raises(priority.MissingStreamError):
            op(99)
    assert len(s) == 2


def test_new_streams_do_not_starve_old_ones() -> None:
    """The PriorityTree failure mode: a steady flow of new streams. Every stream must
    get a turn within one rotation."""
    s = FairScheduler()
    s.insert_stream(1)
    seen = set()
    for sid in range(3, 203, 2):
        s.insert_stream(sid)
        seen.add(next(s))
    assert 1 in seen


def test_nothing_is_patched_at_import() -> None:
    """Importing the package leaves hypercorn's and h2's classes as they are."""
    import hypercorn.trio.run
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.trio.tcp_server import TCPServer

    import connect_proto  # noqa: F401

    for cls in (H2Protocol, H11Protocol, TCPServer, h2.connection.H2Connection):
        for name, value in vars(cls).items():
            if inspect.isfunction(value):
                assert value.__module__ == cls.__module__, f"{cls.__name__}.{name} replaced"
    assert hypercorn.trio.run.TCPServer is TCPServer
    assert hypercorn.trio.run.worker_serve.__module__ == "hypercorn.trio.run"


def test_installed_versions_are_supported() -> None:
    assert compat.unsupported() == []
    compat.check_supported()


async def test_serve_refuses_an_unverified_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    real = compat.version
    monkeypatch.setattr(
        compat, "version", lambda name: "0.19.0" if name == "hypercorn" else real(name)
    )
    with pytest.raises(compat.UnsupportedLibraryError, match=r"hypercorn 0\.19\.0 .*<0\.19"):
        await serve(make_app(), make_config("127.0.0.1", 0))


def test_a_changed_shape_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(H2Protocol, "_window_updated")
    with pytest.raises(compat.UnsupportedLibraryError, match="H2Protocol has no _window_updated"):
        compat.check_supported()


@stock_and_ours("hypercorn issue 1: KeyError for DATA on a stream it forgot ends the server")
async def test_body_after_an_early_answer_is_dropped(
    server_kind: str, nursery: trio.Nursery
) -> None:
    """The response (404, unknown method) is complete while the client still uploads."""
    server = await Server(server_kind, make_app(), make_config("127.0.0.1", 0)).start(nursery)
    peer = await Peer.connect(server.port)
    peer.h2.send_headers(1, connect_headers("/nope.v1.Nope/Nope"))
    await peer.flush()
    events = await peer.until(lambda seen: of_type(seen, h2.events.StreamEnded))
    assert dict(of_type(events, h2.events.ResponseReceived)[0].headers)[b":status"] == b"404"
    await trio.sleep(0.1)  # the server forgets the stream
    for _ in range(4):
        peer.h2.send_data(1, b"\0" * 8000)
    peer.h2.end_stream(1)
    await peer.flush()
    await trio.sleep(0.3)
    server.check()
    assert await unary_ok(server.port)
    await peer.aclose()
    nursery.cancel_scope.cancel()


@stock_and_ours(
    "hypercorn issue 2: a second END_STREAM after gRPC trailers closes the stream without "
    "telling the client, whose upload then fails with STREAM_CLOSED (or stalls)"
)
async def test_grpc_answer_before_the_body_ends_then_upload_completes(
    server_kind: str, nursery: trio.Nursery
) -> None:
    """gRPC trailers sent while the client is still uploading: the client gets them,
    then RST_STREAM(NO_ERROR) (not a silently dead stream that stalls the upload)."""
    server = await Server(server_kind, make_app(), make_config("127.0.0.1", 0)).start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, grpc_headers("/testsvc.v1.TestService/Echo"))
    await stream.send_all(conn.data_to_send())
    body = b"\0" * (1024 * 1024)  # zero-length messages: "more than one" after 10 bytes
    sent = 0
    trailers: list[tuple[bytes, bytes]] = []
    reset: h2.errors.ErrorCodes | None = None
    with trio.move_on_after(5):  # a silently closed stream stalls the upload here
        while reset is None and sent < len(body):
            window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if window > 0:
                chunk = body[sent : sent + window]
                sent += len(chunk)
                conn.send_data(1, chunk, end_stream=sent == len(body))
                await stream.send_all(conn.data_to_send())
                continue
            data = await stream.receive_some(65536)
            if not data:
                break  # the server closed the connection
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    reset = event.error_code
            await stream.send_all(conn.data_to_send())
    await trio.sleep(0.2)
    server.check()
    assert (b"grpc-status", b"12") in trailers
    assert reset is h2.errors.ErrorCodes.NO_ERROR or sent == len(body)
    await stream.aclose()
    nursery.cancel_scope.cancel()


@stock_and_ours(
    "hypercorn issue 3: its PriorityTree starves old streams under sustained concurrency "
    "and ends the server with TooManyStreamsError at 1,000 entries"
)
async def test_sustained_concurrency_on_one_connection(
    server_kind: str, nursery: trio.Nursery
) -> None:
    """A gRPC client keeping 64 unary calls in flight on one connection, 1,500 calls."""
    server = await Server(server_kind, make_app(), make_config("127.0.0.1", 0)).start(nursery)
    peer = await Peer.connect(server.port)
    body = encode_envelope(test_pb2.EchoRequest(message="hi").SerializeToString())
    total, in_flight, started, finished = 1500, 64, 0, 0

    def start_one() -> None:
        nonlocal started
        sid = peer.h2.get_next_available_stream_id()
        peer.h2.send_headers(sid, grpc_headers("/testsvc.v1.TestService/Echo"))
        peer.h2.send_data(sid, body, end_stream=True)
        started += 1

    for _ in range(in_flight):
        start_one()
    await peer.flush()
    with trio.move_on_after(15):
        while finished < total and not peer.closed:
            for event in await peer.events():
                if isinstance(event, h2.events.StreamEnded):
                    finished += 1
                    if started < total:
                        start_one()
            await peer.flush()
    server.check()
    assert finished == total
    await peer.aclose()
    nursery.cancel_scope.cancel()


def _server_connection(kind: type[h2.connection.H2Connection]) -> h2.connection.H2Connection:
    """A server-side connection of ``kind`` that has received a client's request 1."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, grpc_headers(ECHO))
    if kind is RpcH2Connection:
        server: h2.connection.H2Connection = RpcH2Connection()  # its own server config
    else:
        server = kind(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    return server


def _stock_and_ours_connection(bug: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        "kind",
        [
            pytest.param(
                h2.connection.H2Connection, marks=pytest.mark.xfail(strict=True, reason=bug)
            ),
            RpcH2Connection,
        ],
    )


@_stock_and_ours_connection(
    "hypercorn issue 4: after GOAWAY it still calls reset_stream and update_settings for a "
    "late request; h2 raises ProtocolError, which ends the server"
)
def test_refusing_a_request_after_goaway(kind: type[h2.connection.H2Connection]) -> None:
    """hypercorn's refusal of a request during shutdown, at the moment GOAWAY is out
    (reached when a batch of events straddles the last call's end)."""
    server = _server_connection(kind)
    server.close_connection()
    server.reset_stream(1)
    server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})


@_stock_and_ours_connection(
    "hypercorn issue 6: during shutdown it resets a new stream the client already reset "
    "(HEADERS and RST_STREAM in one read); h2 raises StreamClosedError"
)
def test_refusing_a_stream_the_client_reset(kind: type[h2.connection.H2Connection]) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, grpc_headers(ECHO))
    client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    if kind is RpcH2Connection:
        server: h2.connection.H2Connection = RpcH2Connection()  # its own server config
    else:
        server = kind(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(client.data_to_send())
    assert [type(e) for e in events][-2:] == [h2.events.RequestReceived, h2.events.StreamReset]
    server.reset_stream(1, h2.errors.ErrorCodes.REFUSED_STREAM)


async def test_late_requests_during_graceful_shutdown_do_not_crash_serve() -> None:
    """A busy client sends new calls just as the last call in flight finishes after
    shutdown began, before it could see the server's GOAWAY. (On stock hypercorn the
    refused calls' DATA ends the server with issue 1's KeyError.)"""
    async with trio.open_nursery() as nursery:
        server = Server(OURS, make_app(), make_config("127.0.0.1", 0, graceful_timeout=3))
        await server.start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, grpc_headers("/testsvc.v1.TestService/Sleep"))
        body = encode_envelope(test_pb2.SleepRequest(ms=300).SerializeToString())
        conn.send_data(1, body, end_stream=True)
        await stream.send_all(conn.data_to_send())
        await trio.sleep(0.1)
        server.begin_shutdown()  # shutdown begins with Sleep in flight
        trailers: list[tuple[bytes, bytes]] = []
        pending = b""
        with trio.move_on_after(8):
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                # One frame at a time: the trailers and GOAWAY may share a read (the
                # server coalesces writes), and the new calls must go out between them.
                pending += data
                while len(pending) >= 9:
                    size = 9 + int.from_bytes(pending[:3], "big")
                    if len(pending) < size:
                        break
                    frame, pending = pending[:size], pending[size:]
                    if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
                        break  # GOAWAY seen: the rest does not matter here
                    for event in conn.receive_data(frame):
                        if isinstance(event, h2.events.TrailersReceived) and event.stream_id == 1:
                            trailers = list(event.headers)
                        if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                            for sid in (3, 5, 7):  # new calls before we could see GOAWAY
                                conn.send_headers(sid, grpc_headers(ECHO))
                                conn.send_data(sid, encode_envelope(b""), end_stream=True)
                out = conn.data_to_send()
                if out:
                    try:
                        await stream.send_all(out)
                    except trio.BrokenResourceError:
                        break
        await stream.aclose()
        with trio.fail_after(8):
            await server.done.wait()
    assert (b"grpc-status", b"0") in trailers  # the call in flight finished
    assert server.error is None  # and serve returned instead of raising


@stock_and_ours(
    "hypercorn issue 5: closing a connection races a flush; trio.BusyResourceError from "
    "send_all is not caught and ends the server"
)
async def test_load_generator_disconnect(
    server_kind: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """h2load ends each timed run by closing its connections with calls in flight.
    (A plain ASGI app that reads every body, so that issue 1 cannot show first.)
    Needs Debian ``nghttp2-client``, which scripts/test.sh installs."""
    h2load = shutil.which("h2load")
    require_tool("h2load", h2load is not None, "apt-get install nghttp2-client")
    assert h2load is not None
    server = await Server(server_kind, plain_app(), make_config("127.0.0.1", 0)).start(nursery)
    body = tmp_path / "echo.bin"
    body.write_bytes(test_pb2.EchoRequest(message="hello").SerializeToString())
    url = f"http://127.0.0.1:{server.port}/testsvc.v1.TestService/Echo"
    # A race: stock hypercorn usually ends within 2-3 runs; stop at the first crash.
    for _ in range(20 if server_kind == STOCK else 8):
        argv = [h2load, "-c", "4", "-m", "16", "-D", "1", "-d", str(body), url]
        await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        if server.done.is_set():
            break
    await trio.sleep(0.2)
    server.check()
    nursery.cancel_scope.cancel()


@stock_and_ours(
    "hypercorn issue 8: after the connection closes, a handler that sends trailers (or "
    "ends its body) waits forever for the send task, which has ended, to drain its buffer"
)
async def test_call_in_flight_when_the_client_goes_away_ends(server_kind: str) -> None:
    """A handler answers after its client disconnected; the server then stops at once
    instead of waiting out the grace period for that handler."""
    async with trio.open_nursery() as nursery:
        config = make_config("127.0.0.1", 0, graceful_timeout=6)
        server = await Server(server_kind, plain_app(delay=0.3), config).start(nursery)
        peer = await Peer.connect(server.port)
        peer.h2.send_headers(1, connect_headers("/slow"))
        peer.h2.send_data(1, b"request", end_stream=True)
        await peer.flush()
        await trio.sleep(0.1)
        await peer.aclose()  # the client goes away with the call in flight
        await trio.sleep(0.5)  # the handler has answered into the closed connection
        server.begin_shutdown()
        began = trio.current_time()
        with trio.fail_after(10):
            await server.done.wait()
        stopped_after = trio.current_time() - began
    assert server.error is None
    assert stopped_after < 3, stopped_after  # not the 6 s grace period


async def _grpc_unary_calls_and_server_writes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, calls: int, coalesce: bool = True
) -> tuple[list[bytes], dict[int, list[tuple[bytes, bytes]]], dict[int, bytes]]:
    """Send ``calls`` gRPC Echo calls at once over one raw h2 connection; return the
    server's ``send_all`` payloads, and per stream the trailers and the DATA received."""
    writes: list[bytes] = []
    original = trio.SocketStream.send_all

    async def counting_send_all(self: trio.SocketStream, data: Any) -> None:
        if self.socket.getsockname()[1] == port:  # the server's end of the connection
            writes.append(bytes(data))
        await original(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting_send_all)
    port = await nursery.start(
        partial(serve, make_app(), make_config("127.0.0.1", 0), coalesce_writes=coalesce)
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    body = encode_envelope(test_pb2.EchoRequest(message="hello").SerializeToString())
    ids = [1 + 2 * i for i in range(calls)]
    for sid in ids:
        conn.send_headers(sid, grpc_headers("/testsvc.v1.TestService/Echo"))
        conn.send_data(sid, body, end_stream=True)
    await stream.send_all(conn.data_to_send())
    trailers: dict[int, list[tuple[bytes, bytes]]] = {}
    data: dict[int, bytes] = {sid: b"" for sid in ids}
    with trio.fail_after(10):
        while len(trailers) < calls:
            chunk = await stream.receive_some(65536)
            assert chunk, "server closed the connection"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    data[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers[event.stream_id] = list(event.headers)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
    await stream.aclose()
    nursery.cancel_scope.cancel()
    return writes, trailers, data


def _frames(data: bytes) -> list[tuple[int, int, set[str]]]:
    """(type, stream id, flags) of each HTTP/2 frame in ``data`` (no preface)."""
    from hyperframe.frame import Frame

    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append((frame.type, frame.stream_id, set(frame.flags)))
        data = data[9 + length :]
    return frames


def _writes_with_stream_frames(writes: list[bytes]) -> list[list[tuple[int, int, set[str]]]]:
    return [
        [f for f in frames if f[1] != 0]
        for frames in map(_frames, writes)
        if any(f[1] != 0 for f in frames)
    ]


async def test_grpc_unary_response_frames_share_socket_writes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fix 6: a gRPC unary response (HEADERS, DATA, trailing HEADERS) was three
    ``send_all`` calls; coalesced it is at most two, and the bytes decode to the same
    frames in the same order."""
    from hyperframe.frame import DataFrame, HeadersFrame

    writes, trailers, data = await _grpc_unary_calls_and_server_writes(nursery, monkeypatch, 1)
    per_write = _writes_with_stream_frames(writes)
    assert 1 <= len(per_write) <= 2, per_write
    frames = [f for w in per_write for f in w]
    assert [(t, sid) for t, sid, _ in frames] == [
        (HeadersFrame.type, 1),
        (DataFrame.type, 1),
        (HeadersFrame.type, 1),
    ]
    assert "END_STREAM" in frames[2][2] and "END_STREAM" not in frames[0][2]
    assert (b"grpc-status", b"0") in trailers[1]
    reply = test_pb2.EchoResponse.FromString(data[1][5:])
    assert reply.message == "hello"


async def test_concurrent_grpc_responses_share_socket_writes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 calls sent at once: their 96 response frames leave in far fewer writes than
    without coalescing (one per frame; about 45 with it, as hypercorn hands the calls to
    the app one scheduling step at a time), each stream's frames still in order."""
    from hyperframe.frame import DataFrame, HeadersFrame

    calls = 32
    writes, trailers, _ = await _grpc_unary_calls_and_server_writes(nursery, monkeypatch, calls)
    per_write = _writes_with_stream_frames(writes)
    assert len(per_write) < 2 * calls, len(per_write)  # without coalescing: 3 * calls
    assert all((b"grpc-status", b"0") in t for t in trailers.values())
    by_stream: dict[int, list[tuple[int, set[str]]]] = {}
    for t, sid, flags in (f for w in per_write for f in w):
        by_stream.setdefault(sid, []).append((t, flags))
    assert len(by_stream) == calls
    for kinds in by_stream.values():
        assert [t for t, _ in kinds] == [HeadersFrame.type, DataFrame.type, HeadersFrame.type]
        assert "END_STREAM" in kinds[2][1]


async def test_without_coalescing_each_frame_is_its_own_write(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline the two tests above improve on (``serve(coalesce_writes=False)``)."""
    writes, trailers, _ = await _grpc_unary_calls_and_server_writes(
        nursery, monkeypatch, 1, coalesce=False
    )
    assert len(_writes_with_stream_frames(writes)) == 3
    assert (b"grpc-status", b"0") in trailers[1]


async def test_coalesced_writes_keep_backpressure_for_a_slow_reader(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3 MiB response to a client with a huge flow-control window that does not read
    for a while: the coalescing buffer stays near its high-water mark (the senders wait
    for the socket, as before) and every byte arrives, in order."""
    peak = [0]
    original_send = WriteCoalescer.send

    async def recording_send(self: WriteCoalescer, event: Any) -> None:
        await original_send(self, event)
        peak[0] = max(peak[0], self.buffered)

    monkeypatch.setattr(WriteCoalescer, "send", recording_send)
    port = await nursery.start(serve, make_app(), make_config("127.0.0.1", 0))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB (the default limit is 4)
    body = encode_envelope(test_pb2.EchoRequest(payload=payload).SerializeToString())
    conn.send_headers(1, grpc_headers("/testsvc.v1.TestService/Echo"))
    sent = 0
    received = b""
    trailers: list[tuple[bytes, bytes]] = []
    with trio.fail_after(20):
        while sent < len(body):
            window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if window > 0:
                chunk = body[sent : sent + window]
                sent += len(chunk)
                conn.send_data(1, chunk, end_stream=sent == len(body))
                await stream.send_all(conn.data_to_send())
                continue
            conn.receive_data(await stream.receive_some(65536))  # WINDOW_UPDATEs
            await stream.send_all(conn.data_to_send())
        await trio.sleep(0.5)  # the server fills the socket buffers and must wait
        while not trailers:
            data = await stream.receive_some(65536)
            assert data, "server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                    received += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
    await stream.aclose()
    nursery.cancel_scope.cancel()
    assert (b"grpc-status", b"0") in trailers
    assert test_pb2.EchoResponse.FromString(received[5:]).payload == payload
    # below the high-water mark plus one _flush (at most a 16 KiB frame and a header)
    assert 0 < peak[0] < WriteCoalescer.HIGH_WATER + 17 * 1024, peak[0]


# -- the open-stream count h2 takes for each new stream


def _stream_pair(limit: int) -> tuple[h2.connection.H2Connection, RpcH2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server = RpcH2Connection()
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit}
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    return client, server


def test_the_concurrent_stream_limit_holds_and_closed_streams_are_dropped() -> None:
    client, server = _stream_pair(limit=100)
    for _ in range(1000):  # one request at a time, each answered and closed
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, grpc_headers(ECHO), end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
        assert len(server.streams) <= 64 + 1  # h2 counts (and drops closed ones) in time
    open_ids = []
    for _ in range(100):  # up to the limit at once: allowed
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, grpc_headers(ECHO))
        open_ids.append(sid)
    server.receive_data(client.data_to_send())
    # A client that ignores our limit (h2's own client would not send the next one).
    client.remote_settings.update({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    client.remote_settings.acknowledge()
    client.send_headers(client.get_next_available_stream_id(), grpc_headers(ECHO))
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        server.receive_data(client.data_to_send())  # one more: refused


def test_streams_closed_meanwhile_make_room() -> None:
    client, server = _stream_pair(limit=50)  # below the count's floor: no walk before
    for _ in range(50):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, grpc_headers(ECHO), end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(":status", "200")], end_stream=True)  # closed, still kept
    client.receive_data(server.data_to_send())
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, grpc_headers(ECHO))
    events = server.receive_data(client.data_to_send())  # 50 kept, none open: allowed
    assert len(of_type(events, h2.events.RequestReceived)) == 1
    assert list(server.streams) == [sid]  # the closed ones were dropped on the way
