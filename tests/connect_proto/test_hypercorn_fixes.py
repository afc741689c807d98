"""The hypercorn HTTP/2 fixes (connect_proto._server.fixes): scheduler unit tests and a
raw-h2 client that keeps uploading after an early gRPC answer."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import priority
import pytest
import trio
from hypercorn.protocol.h2 import H2Protocol
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._server import fixes as hypercorn_fixes
from connect_proto._server.fixes import FairScheduler
from connect_proto._server.serve import make_config, serve


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


def test_apply_is_idempotent_and_installed() -> None:
    from hypercorn.trio.tcp_server import TCPServer

    patched = (H2Protocol._handle_events, H2Protocol.__init__, TCPServer.protocol_send)
    hypercorn_fixes.apply()
    assert (H2Protocol._handle_events, H2Protocol.__init__, TCPServer.protocol_send) == patched
    assert all(getattr(f, "_connect_proto_patched", False) for f in patched)


async def test_grpc_answer_before_the_body_ends_then_upload_completes(
    nursery: trio.Nursery,
) -> None:
    """gRPC trailers sent while the client is still uploading: the client gets them,
    then RST_STREAM(NO_ERROR) (not a silently dead stream that stalls the upload)."""
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    port = await nursery.start(serve, app, make_config("127.0.0.1", 0))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "POST"),
            (":path", "/testsvc.v1.TestService/Echo"),
            (":scheme", "http"),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    await stream.send_all(conn.data_to_send())
    body = b"\0" * (1024 * 1024)  # zero-length messages: "more than one" after 10 bytes
    sent = 0
    trailers: list[tuple[bytes, bytes]] = []
    reset: h2.errors.ErrorCodes | None = None
    with trio.fail_after(10):  # a silently closed stream would stall the upload here
        while reset is None and sent < len(body):
            window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if sent < len(body) and window > 0 and reset is None:
                chunk = body[sent : sent + window]
                sent += len(chunk)
                conn.send_data(1, chunk, end_stream=sent == len(body))
                await stream.send_all(conn.data_to_send())
                continue
            data = await stream.receive_some(65536)
            assert data, "server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    reset = event.error_code
            await stream.send_all(conn.data_to_send())
    assert (b"grpc-status", b"12") in trailers
    assert reset is h2.errors.ErrorCodes.NO_ERROR or sent == len(body)
    await stream.aclose()
    nursery.cancel_scope.cancel()


def _grpc_headers(path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":path", path),
        (":scheme", "http"),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


async def test_late_requests_during_graceful_shutdown_do_not_crash_serve() -> None:
    """A busy client sends new calls just as the last call in flight finishes after
    shutdown began; hypercorn used to reset them on the already closed connection and
    ``serve`` ended with h2's ProtocolError instead of cleanly."""
    from testsvc.v1 import test_pb2

    from connect_proto._wire.envelope import encode_envelope

    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    server_scope = trio.CancelScope()
    finished: list[bool] = []

    async def run_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await serve(
                app, make_config("127.0.0.1", 0, graceful_timeout=3), task_status=task_status
            )
        finished.append(True)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_server)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, _grpc_headers("/testsvc.v1.TestService/Sleep"))
        body = encode_envelope(test_pb2.SleepRequest(ms=300).SerializeToString())
        conn.send_data(1, body, end_stream=True)
        await stream.send_all(conn.data_to_send())
        await trio.sleep(0.1)
        server_scope.cancel()  # shutdown begins with Sleep in flight
        trailers: list[tuple[bytes, bytes]] = []
        pending = b""
        with trio.move_on_after(8):
            while True:
                data = await stream.receive_some(65536)
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
                    events = conn.receive_data(frame)
                    for event in events:
                        if isinstance(event, h2.events.TrailersReceived) and event.stream_id == 1:
                            trailers = list(event.headers)
                        if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                            for sid in (3, 5, 7):  # new calls before we could see GOAWAY
                                conn.send_headers(
                                    sid, _grpc_headers("/testsvc.v1.TestService/Echo")
                                )
                                conn.send_data(sid, encode_envelope(b""), end_stream=True)
                out = conn.data_to_send()
                if out:
                    try:
                        await stream.send_all(out)
                    except trio.BrokenResourceError:
                        break
        await stream.aclose()
    assert (b"grpc-status", b"0") in trailers  # the call in flight finished
    assert finished == [True]  # and serve returned instead of raising


async def _grpc_unary_calls_and_server_writes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, calls: int
) -> tuple[list[bytes], dict[int, list[tuple[bytes, bytes]]], dict[int, bytes]]:
    """Send ``calls`` gRPC Echo calls at once over one raw h2 connection; return the
    server's ``send_all`` payloads, and per stream the trailers and the DATA received."""
    from hypercorn.trio.tcp_server import TCPServer
    from testsvc.v1 import test_pb2

    from connect_proto._wire.envelope import encode_envelope

    writes: list[bytes] = []
    original = trio.SocketStream.send_all

    async def counting_send_all(self: trio.SocketStream, data: Any) -> None:
        if self.socket.getsockname()[1] == port:  # the server's end of the connection
            writes.append(bytes(data))
        await original(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting_send_all)
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    port = await nursery.start(serve, app, make_config("127.0.0.1", 0))
    assert getattr(TCPServer.protocol_send, "_connect_proto_patched", False)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    body = encode_envelope(test_pb2.EchoRequest(message="hello").SerializeToString())
    ids = [1 + 2 * i for i in range(calls)]
    for sid in ids:
        conn.send_headers(sid, _grpc_headers("/testsvc.v1.TestService/Echo"))
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
    from testsvc.v1 import test_pb2

    assert hypercorn_fixes._coalescing
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
    """The baseline the two tests above improve on (fix 6 switched off)."""
    monkeypatch.setattr(hypercorn_fixes, "_coalescing", False)
    writes, trailers, _ = await _grpc_unary_calls_and_server_writes(nursery, monkeypatch, 1)
    assert len(_writes_with_stream_frames(writes)) == 3
    assert (b"grpc-status", b"0") in trailers[1]


def test_coalescing_skipped_with_a_warning_if_hypercorn_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def _flush(self: Any) -> None:  # a send path fix 6 does not know
        pass

    monkeypatch.setattr(hypercorn_fixes, "_coalescing", True)
    monkeypatch.setattr(H2Protocol, "_flush", _flush)
    with caplog.at_level("WARNING", logger="connect_proto._server.serve"):
        hypercorn_fixes.apply()
    assert not hypercorn_fixes._coalescing
    assert "write coalescing skipped" in caplog.text


async def test_coalesced_writes_keep_backpressure_for_a_slow_reader(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3 MiB response to a client with a huge flow-control window that does not read
    for a while: the coalescing buffer stays near its high-water mark (the senders wait
    for the socket, as before) and every byte arrives, in order."""
    from testsvc.v1 import test_pb2

    from connect_proto._wire.envelope import encode_envelope

    peak = [0]
    original_send = hypercorn_fixes.WriteCoalescer.send

    async def recording_send(self: hypercorn_fixes.WriteCoalescer, event: Any) -> None:
        await original_send(self, event)
        peak[0] = max(peak[0], self._size)

    monkeypatch.setattr(hypercorn_fixes.WriteCoalescer, "send", recording_send)
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    port = await nursery.start(serve, app, make_config("127.0.0.1", 0))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB (the default limit is 4)
    body = encode_envelope(test_pb2.EchoRequest(payload=payload).SerializeToString())
    conn.send_headers(1, _grpc_headers("/testsvc.v1.TestService/Echo"))
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
    assert 0 < peak[0] < hypercorn_fixes.WriteCoalescer.HIGH_WATER + 17 * 1024, peak[0]
