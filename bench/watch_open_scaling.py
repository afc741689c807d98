"""Is opening watch streams linear? Time and memory to open N idle streams, per N.

For each N: a fresh ``actions-service serve`` (default durable store), N roots
enqueued, then N WatchForUpdates streams opened at once by a separate grpcio process
(100 streams per connection) and timed until every one has its snapshot and sentinel;
the server's CPU time per stream opened (the client shares the machine's cores, so the
wall time can grow with the client's work; the server's CPU per stream shows whether the
service's own work is linear); RSS growth per open stream; RSS left after they
closed; with ``--cycles 2`` or more the same streams are opened again, to tell memory
kept (a leak) from memory reused.

    python bench/watch_open_scaling.py                       # 1,000 and 10,000, ~3 min
    python bench/watch_open_scaling.py --streams 1000,5000 --cycles 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import grpc
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _watch_client as wc
import side_by_side as sbs
import watch_fanout as wf


async def measure(streams: int, cycles: int) -> list[tuple[float, float, int, int]]:
    """(seconds to open and sync, server CPU seconds for that, RSS KiB while open, RSS
    KiB after close) per cycle, RSS relative to the server after the roots were enqueued."""
    with tempfile.TemporaryDirectory() as workdir:
        server = sbs.start("ours", Path(workdir))
        try:
            channel = grpc.aio.insecure_channel(server.target, options=wc.CHANNEL_OPTIONS)
            stub = ActionsServiceStub(channel)
            watchers = wf.WatcherProcess()
            try:
                parents = [(f"idle{i}", "a0") for i in range(streams)]
                await wf.bounded(
                    [
                        (lambda r=r: stub.Enqueue(wf.task_request(r, "a0", None), timeout=30))
                        for r, _ in parents
                    ],
                    32,
                )
                await asyncio.sleep(1)
                base = sbs.rss_kib(server.pid)
                results = []
                for _ in range(cycles):
                    cpu_before = sbs.cpu_seconds(server.pid)
                    _, opened, seconds = await watchers.call("open", server.target, parents, 1, 100)
                    if opened != streams:
                        raise RuntimeError(f"only {opened} of {streams} streams opened")
                    cpu = sbs.cpu_seconds(server.pid) - cpu_before
                    await asyncio.sleep(1)
                    during = sbs.rss_kib(server.pid) - base
                    await watchers.call("close")
                    await asyncio.sleep(2)
                    results.append((seconds, cpu, during, sbs.rss_kib(server.pid) - base))
                return results
            finally:
                watchers.stop()
                await channel.close()
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--streams", default="1000,10000", help="comma-separated stream counts")
    ap.add_argument("--cycles", type=int, default=2, help="open/close cycles per count")
    args = ap.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    first: tuple[int, float] | None = None
    print(
        "streams  cycle  open+sync s  x first  server CPU ms/stream  KiB/stream open"
        "  KiB kept after close"
    )
    for n in counts:
        cycles = asyncio.run(measure(n, args.cycles))
        for cycle, (seconds, cpu, during, after) in enumerate(cycles):
            if first is None:
                first = (n, seconds)
            scale = seconds / first[1]
            print(
                f"{n:7d}  {cycle + 1:5d}  {seconds:11.2f}  {scale:7.1f}  "
                f"{1000 * cpu / n:19.3f}  {during / n:15.1f}  {after:20,d}"
            )
    if first is not None and len(counts) > 1:
        print(f"(linear would be x{counts[-1] / first[0]:.0f} for {counts[-1]:,} streams)")


if __name__ == "__main__":
    main()
