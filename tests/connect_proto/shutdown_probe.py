#!/usr/bin/env python
"""SIGTERM under HTTP/1.1 keep-alive load: how long a real ``actions-service`` takes to
stop, and whether every request it read got an answer. Not a test; prints figures:

    python tests/connect_proto/shutdown_probe.py [--python PATH] [--trials 8]

Each trial starts the service (``--memory``, grace period 10 s), runs 32 keep-alive
connections each sending Connect unary health checks back to back, sends SIGTERM after
1 s, and reports the time to exit and the requests that got no response (a request is
"unanswered" when the server closed the connection after reading it: the client had
sent it and got neither a response nor a clean close before sending). "server logged"
is the calls in the access log: more than the responses received would be requests the
server read and never answered.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h11
import trio

PATH = "/grpc.health.v1.Health/Check"


async def client(port: int, stop: trio.Event, counts: dict[str, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("host", "127.0.0.1"),
        ("content-type", "application/json"),
        ("content-length", "2"),
    ]
    try:
        while not stop.is_set():
            data = conn.send(h11.Request(method="POST", target=PATH, headers=headers))
            data = (data or b"") + (conn.send(h11.Data(data=b"{}")) or b"")
            data += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(data)
            counts["sent"] += 1
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    key = f"status {event.status_code}"
                    counts[key] = counts.get(key, 0) + 1
                if isinstance(event, h11.EndOfMessage):
                    break
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        counts["unanswered"] += 1  # closed after the request went out, no response
    finally:
        await stream.aclose()


async def trial(python: str) -> tuple[float, dict[str, int]]:
    log = Path(tempfile.mkdtemp(prefix="shutdown-")) / "server.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [python, "-m", "actions.cli", "serve", "--port", "0", "--memory"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    for _ in range(200):
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            break
        await trio.sleep(0.05)
    else:
        raise SystemExit(f"server did not start:\n{log.read_text()}")
    port = int(found.group(1))
    counts = {"sent": 0, "unanswered": 0}
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(client, port, stop, counts)
        await trio.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await proc.wait()
        took = time.monotonic() - started
        stop.set()
    counts["server logged"] = log.read_text().count("connect_proto.access")
    return took, counts


async def main(python: str, trials: int) -> None:
    for number in range(1, trials + 1):
        took, counts = await trial(python)
        print(f"trial {number}: exit {took:.2f} s after SIGTERM; {counts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    trio.run(main, args.python, args.trials)
