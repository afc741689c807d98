"""Clients that stop reading, leave, or call without a token must not hold the server's
calls, tasks or stream slots: found by an adversarial pass over the running service.

Each test runs ``actions-service serve --memory`` as its own process and talks to it
with a raw ``h2`` client (tests/support/raw_h2.py) that advertises a flow-control window
of 0, so that no response DATA can ever reach it, and then closes, resets or simply
keeps its socket. What the server still holds is read from its ``/metrics``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from actions_harness import aid, task_req
from flyteidl2.actions import actions_service_pb2 as pb
from grpc_health.v1 import health_pb2
from raw_h2 import (
    CONNECT_PROTO,
    CONNECT_STREAM,
    RawH2,
    ServiceProcess,
    envelope,
    metric_sum,
    open_calls,
    scrape,
    wait_until,
)

SVC = "/flyteidl2.actions.ActionsService/"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
RESOURCE_EXHAUSTED = b"8"


def _tally(statuses: Iterable[bytes | None]) -> dict[bytes | None, int]:
    """How many streams ended with each status (None: still open)."""
    return dict(Counter(statuses))


UNAUTHENTICATED = b"16"
TOKEN = "s3cr3t-token"


def _watch_body(parent: str = "p") -> bytes:
    return pb.WatchForUpdatesRequest(parent_action_id=aid(parent)).SerializeToString()


def _open_streams(port: int) -> float:
    return metric_sum(scrape(port), "rpc_server_open_streams")


_stalled = itertools.count()


def _stall(port: int, calls: int = 200, watches: int = 20) -> RawH2:
    """A window-0 connection with ``calls`` unary calls (Connect errors and gRPC
    successes) and ``watches`` watch streams in flight; every response is stuck at its
    first DATA frame."""
    client = RawH2(port, window=0)
    update = pb.UpdateRequest().SerializeToString()  # INVALID_ARGUMENT, in a body
    for index in range(calls):
        if index % 2:
            client.call(SVC + "Update", update, content_type=CONNECT_PROTO)
        else:
            request = task_req(aid(f"a{next(_stalled)}"))
            client.call(SVC + "Enqueue", request.SerializeToString())
    for _ in range(watches):
        client.call(SVC + "WatchForUpdates", _watch_body())
    client.flush()
    return client


@pytest.mark.parametrize("leave", ["close", "reset"])
def test_calls_of_a_window_zero_client_end_when_it_leaves(tmp_path: Path, leave: str) -> None:
    with ServiceProcess(tmp_path / "server.log") as server:
        clients = [_stall(server.port) for _ in range(3)]
        # Every call reached the server (and is stuck writing) before the client leaves.
        assert wait_until(lambda: 3 * 220 - open_calls(server.port), 0, 15) == 0
        for client in clients:
            client.close() if leave == "close" else client.reset()
        assert wait_until(lambda: open_calls(server.port)) == 0, server.log_text()[-3000:]
        assert _open_streams(server.port) == 0
        assert server.alive()


def test_a_client_that_reads_nothing_is_abandoned_after_the_write_timeout(
    tmp_path: Path,
) -> None:
    env = {"ACTIONS_SERVER_WRITE_TIMEOUT": "1"}
    with ServiceProcess(tmp_path / "server.log", env) as server:
        client = _stall(server.port, calls=100, watches=0)
        try:
            # The socket stays open: only the write deadline can end these calls.
            assert wait_until(lambda: open_calls(server.port), 0, 15) == 0
            healthy = RawH2(server.port)
            sid = healthy.call(SVC + "Update", pb.UpdateRequest().SerializeToString())
            assert healthy.responses(2)[sid][b"grpc-status"] == b"3"  # INVALID_ARGUMENT
            healthy.close()
        finally:
            client.close()


def test_calls_refused_for_want_of_a_token_hold_no_watch_slot(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f'tokens: [{{name: exec, token: "{TOKEN}", allow: ["*"]}}]\n')
    env = {"ACTIONS_LIMITS_MAX_WATCH_SUBSCRIPTIONS": "3"}
    with ServiceProcess(tmp_path / "server.log", env, "--auth-token-file", str(tokens)) as server:
        # Tokenless watchers that never read their refusal, on a connection kept open.
        # Connect's streaming protocol puts the refusal in the body, where the window of
        # 0 keeps it: a slot taken before the token was checked would be held for good.
        intruder = RawH2(server.port, window=0)
        for _ in range(20):
            body = envelope(_watch_body())
            intruder.call(SVC + "WatchForUpdates", body, content_type=CONNECT_STREAM)
        intruder.flush()
        assert len(intruder.responses(1)) == 20  # the heads went out; the bodies cannot
        owner = RawH2(server.port)
        auth = [("authorization", f"Bearer {TOKEN}")]
        ids = [owner.call(SVC + "WatchForUpdates", _watch_body(), headers=auth) for _ in range(4)]
        owner.flush()
        seen = owner.responses(1)
        # Three run (headers, no status yet); one is over the limit (streams opened at
        # once may start in any order).
        assert _tally(seen[sid].get(b"grpc-status") for sid in ids) == {
            None: 3,
            RESOURCE_EXHAUSTED: 1,
        }
        owner.close()
        intruder.close()


def test_server_streams_of_every_kind_are_bounded_per_connection_and_in_all(
    tmp_path: Path,
) -> None:
    env = {
        "ACTIONS_LIMITS_MAX_SERVER_STREAMS_PER_CONNECTION": "2",
        "ACTIONS_LIMITS_MAX_SERVER_STREAMS": "5",
    }
    health = health_pb2.HealthCheckRequest().SerializeToString()
    with ServiceProcess(tmp_path / "server.log", env) as server:
        first = RawH2(server.port)
        ids = [first.call(HEALTH_WATCH, health), first.call(SVC + "WatchForUpdates", _watch_body())]
        ids.append(first.call(HEALTH_WATCH, health))
        first.flush()
        seen = first.responses(1)
        assert _tally(seen[sid].get(b"grpc-status") for sid in ids) == {
            None: 2,
            RESOURCE_EXHAUSTED: 1,
        }
        others = [RawH2(server.port) for _ in range(3)]
        statuses = []
        for other in others:
            sids = [other.call(HEALTH_WATCH, health) for _ in range(2)]
            other.flush()
            got = other.responses(1)
            statuses += [got[sid].get(b"grpc-status") for sid in sids]
        # Two on the first connection, then three more in all: the sixth and later refused.
        assert _tally(statuses) == {None: 3, RESOURCE_EXHAUSTED: 3}
        for client in [first, *others]:
            client.close()
        assert wait_until(lambda: _open_streams(server.port)) == 0
