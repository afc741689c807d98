"""The hypercorn HTTP/2 fixes (connect_proto.hypercorn_fixes): scheduler unit tests and a
raw-h2 client that keeps uploading after an early gRPC answer."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import priority
import pytest
import trio
from hypercorn.protocol.h2 import H2Protocol
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto import hypercorn_fixes
from connect_proto.app import ConnectApp
from connect_proto.hypercorn_fixes import FairScheduler
from connect_proto.server import make_config, serve


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

    from connect_proto.envelope import encode_envelope

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
        with trio.move_on_after(8):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.TrailersReceived) and event.stream_id == 1:
                        trailers = list(event.headers)
                    if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                        for sid in (3, 5, 7):  # new calls before we could see GOAWAY
                            conn.send_headers(sid, _grpc_headers("/testsvc.v1.TestService/Echo"))
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
