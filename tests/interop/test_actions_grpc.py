"""The stock gRPC stubs shipped in flyteidl2 (grpcio, C core) against ``actions-service
serve``: a client generated from the IDL works unchanged."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from actions_harness import aid, task_req, update_req
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub
from flyteidl2.common import phase_pb2 as P


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "actions.cli", "serve", "--memory", "--port", "0"],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 15
    port = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    assert port, "server did not start"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


@pytest.fixture
def stub(target: str) -> Iterator[ActionsServiceStub]:
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        yield ActionsServiceStub(channel)


def test_grpc_enqueue_watch_update(stub: ActionsServiceStub) -> None:
    root, child = aid("a0", "g1"), aid("c1", "g1")
    stub.Enqueue(task_req(root), timeout=10)
    stub.Enqueue(task_req(child, parent="a0"), timeout=10)
    stream = stub.WatchForUpdates(pb.WatchForUpdatesRequest(parent_action_id=root), timeout=10)
    seen = {}
    for msg in stream:
        if msg.HasField("control_message"):
            break
        seen[msg.action_update.action_id.name] = msg.action_update.phase
    assert seen == {"a0": P.ACTION_PHASE_QUEUED, "c1": P.ACTION_PHASE_QUEUED}
    stub.Update(update_req(child, P.ACTION_PHASE_RUNNING), timeout=10)
    update = next(stream).action_update
    assert (update.action_id.name, update.phase) == ("c1", P.ACTION_PHASE_RUNNING)
    stream.cancel()


def _open_streams(target: str) -> int:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^actions_watch_subscribers (\S+)$", text, re.MULTILINE)
    assert found, text
    return int(float(found.group(1)))


def test_grpc_cancel_releases_the_subscription_at_once(
    stub: ActionsServiceStub, target: str
) -> None:
    root = aid("a0", "g3")
    stub.Enqueue(task_req(root), timeout=10)
    base = _open_streams(target)
    stream = stub.WatchForUpdates(pb.WatchForUpdatesRequest(parent_action_id=root), timeout=30)
    next(stream)
    assert next(stream).control_message.sentinel
    assert _open_streams(target) == base + 1
    stream.cancel()  # RST_STREAM
    deadline = time.monotonic() + 2
    while _open_streams(target) > base and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_streams(target) == base


def test_grpc_error_codes(stub: ActionsServiceStub) -> None:
    root = aid("a0", "g2")
    stub.Enqueue(task_req(root), timeout=10)
    cases = [
        (lambda: stub.Enqueue(task_req(root), timeout=10), grpc.StatusCode.ALREADY_EXISTS),
        (
            lambda: stub.Abort(pb.AbortRequest(action_id=aid("nope", "g2")), timeout=10),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: stub.Enqueue(pb.EnqueueRequest(action={"action_id": root}), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stub.WatchForUpdates(pb.WatchForUpdatesRequest(), timeout=10)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "filter" in info.value.details()  # type: ignore[attr-defined]
