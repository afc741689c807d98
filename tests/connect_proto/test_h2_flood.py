"""Per-connection HTTP/2 flood limits (connect_proto._server.flood): rapid reset
(CVE-2023-44487), PING, SETTINGS and empty DATA floods end the connection with GOAWAY
ENHANCE_YOUR_CALM and one log line; normal use, including cancelled streams that had
started answering, does not."""

from __future__ import annotations

import logging

import h2.errors
import h2.events
import pytest
import trio
from h2_peer import (
    OURS,
    Peer,
    Server,
    connect_headers,
    grpc_headers,
    of_type,
    stock_and_ours,
    unary_ok,
)
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._server.flood import FloodLimits, FloodMeter, Frames
from connect_proto._server.serve import make_config
from connect_proto._wire.envelope import encode_envelope

SLEEP = "/testsvc.v1.TestService/Sleep"
ECHO = "/testsvc.v1.TestService/Echo"
COUNT = "/testsvc.v1.TestService/Count"
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def _goaway(events: list[h2.events.Event]) -> h2.errors.ErrorCodes | None:
    ended = of_type(events, h2.events.ConnectionTerminated)
    return ended[0].error_code if ended else None


async def _start(
    nursery: trio.Nursery, kind: str = OURS, **limits: float
) -> tuple[Server, TestServiceImpl]:
    impl = TestServiceImpl()
    app = ConnectApp([(TEST_SERVICE, impl)])
    config = make_config("127.0.0.1", 0, h2_flood_limits=FloodLimits(**limits))
    return await Server(kind, app, config).start(nursery), impl


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "connect_proto._server" and r.levelno >= logging.WARNING
    ]


def test_meter_counts_per_window_and_ignores_pings_during_transfers() -> None:
    now = [0.0]
    meter = FloodMeter(FloodLimits(window=10, early_resets=2, pings=1), clock=lambda: now[0])
    assert meter.count(Frames.EARLY_RESET) is None
    assert meter.count(Frames.EARLY_RESET) is None
    reason = meter.count(Frames.EARLY_RESET)
    assert reason == "more than 2 streams reset before a response in 10s"
    now[0] = 10.0  # a new window
    assert meter.count(Frames.EARLY_RESET) is None
    assert meter.count(Frames.PING) is None
    meter.sent_response_bytes()
    assert meter.count(Frames.PING) is None  # probing a transfer: not counted
    assert meter.count(Frames.PING) is not None
    with pytest.raises(ValueError, match="pings must be >= 1"):
        FloodLimits(pings=0)


def test_early_resets_among_many_answered_streams_are_tolerated() -> None:
    """A busy client whose calls time out now and then: past the count, but not the
    share of the streams opened."""
    meter = FloodMeter(FloodLimits(early_resets=2, early_reset_share=0.5), clock=lambda: 0.0)
    for _ in range(10):
        meter.stream_opened()
    assert [meter.count(Frames.EARLY_RESET) for _ in range(5)] == [None] * 5
    assert meter.count(Frames.EARLY_RESET) is not None  # 6 of 10


@stock_and_ours("hypercorn has no limit on streams a client opens and resets at once")
async def test_rapid_reset_ends_the_connection(
    server_kind: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches of HEADERS+RST_STREAM pairs with the default limits: GOAWAY
    ENHANCE_YOUR_CALM after about 200, one log line, no handler ever started, and
    other clients are served."""
    caplog.set_level(logging.INFO)
    server, impl = await _start(nursery, server_kind)
    peer = await Peer.connect(server.port)
    body = encode_envelope(test_pb2.SleepRequest(ms=1000).SerializeToString())
    error = None
    with trio.move_on_after(10):
        for _ in range(20):  # 1,000 pairs, 50 to a write
            for _ in range(50):
                sid = peer.h2.get_next_available_stream_id()
                peer.h2.send_headers(sid, grpc_headers(SLEEP))
                peer.h2.send_data(sid, body)
                peer.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            try:
                await peer.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            with trio.move_on_after(0.05):
                error = _goaway(await peer.events()) or error
            if error is not None:
                break
        if error is None:  # whatever is still in flight
            error = _goaway(await peer.until(lambda seen: _goaway(seen) is not None, 2))
    await peer.aclose()
    server.check()
    assert error is CALM
    assert impl.started == []
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    assert "more than 200 streams reset before a response in 10s" in _warnings(caplog)[0]
    assert await unary_ok(server.port)
    nursery.cancel_scope.cancel()


async def test_resets_after_the_handler_started_count_up_to_the_limit(
    nursery: trio.Nursery,
) -> None:
    """Each HEADERS read on its own (its handler runs), then reset: the limit's worth
    is allowed, and the connection keeps serving; one more ends it."""
    server, impl = await _start(nursery, early_resets=10)
    peer = await Peer.connect(server.port)
    body = encode_envelope(test_pb2.SleepRequest(ms=1000).SerializeToString())

    async def open_then_reset() -> None:
        started = impl.started.count("sleep") + 1
        sid = peer.h2.get_next_available_stream_id()
        peer.h2.send_headers(sid, grpc_headers(SLEEP))
        peer.h2.send_data(sid, body, end_stream=True)
        await peer.flush()
        for _ in range(1000):  # until its handler runs
            if impl.started.count("sleep") == started:
                break
            await trio.sleep(0.005)
        peer.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await peer.flush()

    with trio.fail_after(10):
        for _ in range(10):
            await open_then_reset()
        sid = peer.h2.get_next_available_stream_id()  # still served
        peer.h2.send_headers(sid, connect_headers(ECHO))
        peer.h2.send_data(sid, test_pb2.EchoRequest().SerializeToString(), end_stream=True)
        await peer.flush()
        events = await peer.until(lambda seen: of_type(seen, h2.events.StreamEnded))
        assert _goaway(events) is None and of_type(events, h2.events.StreamEnded)
        await open_then_reset()
        events = await peer.until(lambda seen: _goaway(seen) is not None)
    assert _goaway(events) is CALM
    await peer.aclose()
    server.check()
    nursery.cancel_scope.cancel()


async def test_cancelling_streams_that_are_answering_is_not_a_flood(
    nursery: trio.Nursery,
) -> None:
    """A client that stops server streams after their first message, many times."""
    server, _ = await _start(nursery, early_resets=5)
    peer = await Peer.connect(server.port)
    body = encode_envelope(test_pb2.CountRequest(count=100, delay_ms=10).SerializeToString())
    with trio.fail_after(20):
        for _ in range(20):
            sid = peer.h2.get_next_available_stream_id()
            peer.h2.send_headers(sid, grpc_headers(COUNT))
            peer.h2.send_data(sid, body, end_stream=True)
            await peer.flush()
            events = await peer.until(
                lambda seen, sid=sid: any(
                    isinstance(e, h2.events.DataReceived) and e.stream_id == sid for e in seen
                )
            )
            assert _goaway(events) is None
            peer.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            await peer.flush()
    assert not peer.closed
    await peer.aclose()
    server.check()
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("flood", ["ping", "settings", "empty_data"])
async def test_control_frame_floods_end_the_connection(
    flood: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = await _start(nursery, pings=10, settings=10, empty_data=10)
    peer = await Peer.connect(server.port)
    if flood == "empty_data":
        peer.h2.send_headers(1, grpc_headers(SLEEP))
    for i in range(11):
        if flood == "ping":
            peer.h2.ping(i.to_bytes(8, "big"))
        elif flood == "settings":
            peer.h2.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536 + i})
        else:
            peer.h2.send_data(1, b"")
        await peer.flush()
    events = await peer.until(lambda seen: _goaway(seen) is not None, 5)
    assert _goaway(events) is CALM
    assert len(_warnings(caplog)) == 1
    await peer.aclose()
    server.check()
    assert await unary_ok(server.port)
    nursery.cancel_scope.cancel()


async def test_pings_alongside_responses_are_not_counted(nursery: trio.Nursery) -> None:
    """As gRPC clients probe bandwidth: a PING after each response."""
    server, _ = await _start(nursery, pings=3)
    peer = await Peer.connect(server.port)
    with trio.fail_after(10):
        for i in range(20):
            sid = peer.h2.get_next_available_stream_id()
            peer.h2.send_headers(sid, connect_headers(ECHO))
            peer.h2.send_data(sid, test_pb2.EchoRequest().SerializeToString(), end_stream=True)
            peer.h2.ping(i.to_bytes(8, "big"))
            await peer.flush()
            events = await peer.until(lambda seen: of_type(seen, h2.events.PingAckReceived))
            assert _goaway(events) is None
    assert not peer.closed
    await peer.aclose()
    server.check()
    nursery.cancel_scope.cancel()
