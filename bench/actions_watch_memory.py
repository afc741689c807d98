"""Server memory per idle WatchForUpdates stream (target: < 30 KiB at 10,000 streams).

Starts ``actions-service serve --memory`` in a subprocess, opens N watch streams over
HTTP/2 (h2c, 90 streams per connection: above ~100 httpcore waits for a free stream slot
instead of opening another connection), waits until every stream has its sentinel, and
reports the server's RSS growth per stream. Then closes the streams and checks that the
server's ``/metrics`` shows zero open streams.

    python bench/actions_watch_memory.py [N]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import httpx
import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common.identifier_pb2 import ActionIdentifier

from connect_proto.client import ConnectClient

PATH = "/flyteidl2.actions.ActionsService/WatchForUpdates"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_streams(base: str, n: int, ready: trio.Event, done: trio.Event) -> None:
    clients = [ConnectClient(base, http2=True, timeout=600) for _ in range((n + 89) // 90)]
    synced = 0

    async def one(i: int) -> None:
        nonlocal synced
        client = clients[i % len(clients)]
        parent = ActionIdentifier(
            run={"org": "o", "project": "p", "domain": "d", "name": f"r{i}"}, name="a0"
        )
        stream = client.server_stream(
            PATH, pb.WatchForUpdatesRequest(parent_action_id=parent), pb.WatchForUpdatesResponse
        )
        try:
            async for msg in stream:
                if msg.HasField("control_message"):
                    synced += 1
                    if synced == n:
                        ready.set()
                    await done.wait()
                    return
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    for client in clients:
        await client.aclose()


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "actions.cli", "serve", "--memory", "--port", "0"],
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with open(log.name) as fh:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", fh.read())
        if m:
            print(f"server log: {log.name}", file=sys.stderr)
            return proc, f"http://127.0.0.1:{m.group(1)}"
    proc.kill()
    raise RuntimeError("server did not start")


async def measure(pid: int, base: str, n: int) -> None:
    await trio.sleep(0.5)
    before = rss_kib(pid)
    ready, done = trio.Event(), trio.Event()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_streams, base, n, ready, done)
        await ready.wait()
        opened = time.perf_counter() - t0
        await trio.sleep(1.0)
        after = rss_kib(pid)
        async with httpx.AsyncClient() as http:
            metrics = json.loads((await http.get(base + "/metrics")).text)
        done.set()
    await trio.sleep(1.0)
    async with httpx.AsyncClient() as http:
        closed = json.loads((await http.get(base + "/metrics")).text)
    print(
        f"streams={n} open_time={opened:.1f}s rss_before={before} KiB rss_after={after} KiB "
        f"per_stream={(after - before) / n:.1f} KiB "
        f"server_watch_streams={metrics['watch_streams']} after_close={closed['watch_streams']}"
    )


def main(n: int) -> None:
    proc, base = start_server()
    try:
        trio.run(measure, proc.pid, base, n)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
