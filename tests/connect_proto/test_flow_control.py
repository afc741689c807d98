"""Connection-level WINDOW_UPDATEs: they release what flow control held back, and leave
idle streams alone (hypercorn unblocks every open stream on each one, and its send task
then visits them all for nothing)."""

from __future__ import annotations

from typing import ClassVar

import h2.events
import h2.settings
import pytest
import trio
from h2_peer import OURS, Peer, Server, grpc_headers, make_app, of_type
from testsvc.v1 import test_pb2

from connect_proto._server import protocol
from connect_proto._server.scheduler import FairScheduler
from connect_proto._server.serve import make_config
from connect_proto._wire.envelope import encode_envelope

COUNT = "/testsvc.v1.TestService/Count"
ECHO = "/testsvc.v1.TestService/Echo"


class CountingScheduler(FairScheduler):
    unblocked: ClassVar[list[int]] = []

    def unblock(self, stream_id: int) -> None:
        CountingScheduler.unblocked.append(stream_id)
        super().unblock(stream_id)


@pytest.fixture
async def server(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Server:
    CountingScheduler.unblocked = []
    monkeypatch.setattr(protocol, "FairScheduler", CountingScheduler)
    return await Server(OURS, make_app(), make_config("127.0.0.1", 0)).start(nursery)


async def test_idle_streams_are_not_unblocked(server: Server) -> None:
    peer = await Peer.connect(server.port)
    quiet = encode_envelope(test_pb2.CountRequest(count=2, delay_ms=5000).SerializeToString())
    for _ in range(20):
        sid = peer.h2.get_next_available_stream_id()
        peer.h2.send_headers(sid, grpc_headers(COUNT))
        peer.h2.send_data(sid, quiet, end_stream=True)
    await peer.flush()
    await trio.sleep(0.3)  # every handler is waiting: 20 open streams, nothing to send
    before = len(CountingScheduler.unblocked)
    peer.h2.increment_flow_control_window(1 << 20)  # connection level
    peer.h2.increment_flow_control_window(1 << 20, stream_id=1)
    peer.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    await peer.flush()
    await trio.sleep(0.3)
    assert CountingScheduler.unblocked[before:] == []
    await peer.aclose()
    server.check()


async def test_a_response_held_by_the_connection_window_is_released(server: Server) -> None:
    """Streams may take 1 MiB each; the connection only the default 64 KiB until the
    client acknowledges what it read (Peer.events does, with connection-level updates)."""
    peer = await Peer.connect(server.port)
    peer.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    big = encode_envelope(test_pb2.EchoRequest(message="x" * 300_000).SerializeToString())
    sids, events = [], []
    for _ in range(3):
        sid = peer.h2.get_next_available_stream_id()
        peer.h2.send_headers(sid, grpc_headers(ECHO))
        sids.append(sid)
        sent = 0
        while sent < len(big):  # as much as the server's windows allow, then read
            room = min(peer.h2.local_flow_control_window(sid), peer.h2.max_outbound_frame_size)
            if room == 0:
                await peer.flush()
                events += await peer.events()
                continue
            chunk = big[sent : sent + room]
            sent += len(chunk)
            peer.h2.send_data(sid, chunk, end_stream=sent == len(big))
        await peer.flush()
    events += await peer.until(
        lambda seen: len(of_type(events + seen, h2.events.StreamEnded)) == len(sids), limit=20
    )
    received = sum(len(e.data) for e in of_type(events, h2.events.DataReceived))
    assert received > 3 * 300_000
    assert set(CountingScheduler.unblocked) >= set(sids)  # each was held, then released
    await peer.aclose()
    server.check()
