"""Cost of the console's live streams (prints figures; nothing is asserted).

    .venv/bin/python bench/console_watch.py [--sizes 13,100,1000] [--repeat 200]

For runs of each size (a root, 10 parents, the rest spread under them, three levels):

- ``event``: what WatchRun does per store event: one object turned into an ActionView,
  its digest compared, one message built (in-process, µs);
- ``GetRun``: what the page did before per burst of updates (a whole-run re-read, ms);
- ``latency``: an Update RPC until a WatchRun client over HTTP/1.1 Connect sees the
  change of an action three levels down (ms, median and max).

And the fan-out's extra work per event with console streams open: finding the streams
of an event's run and of the roots (``FanOut._event_subs_of``, µs), with 100 runs watched.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests" / "support", ROOT / "src"):
    sys.path.insert(0, str(_path))

import trio  # noqa: E402
from actions_harness import aid, task_req, update_req  # noqa: E402
from flyteidl2.actions import actions_service_pb2 as pb  # noqa: E402
from flyteidl2.common import phase_pb2  # noqa: E402

from actions import naming  # noqa: E402
from actions._gen.actions.console.v1 import console_pb2 as cpb  # noqa: E402
from actions.app import ActionsApplication, open_memory_store  # noqa: E402
from actions.config import Config  # noqa: E402
from actions.console.service import _run_changes  # noqa: E402
from actions.fanout import ROOTS, RunKey  # noqa: E402
from actions.store.base import WatchEvent  # noqa: E402
from connect_proto import ConnectClient, RequestContext  # noqa: E402
from connect_proto._headers import Headers  # noqa: E402
from connect_proto._server.serve import make_config  # noqa: E402
from connect_proto._server.serve import serve as serve_asgi  # noqa: E402

CONSOLE = "/flyte_actions.console.v1.ConsoleService/"
ACTIONS = "/flyteidl2.actions.ActionsService/"


def ctx() -> RequestContext:
    return RequestContext(
        method=CONSOLE + "GetRun", protocol="direct", request_headers=Headers(), deadline=math.inf
    )


async def fill(client: ConnectClient, run: str, size: int) -> str:
    """A root, 10 parents, then children and grandchildren; returns a depth-3 action."""
    enqueue = ACTIONS + "Enqueue"
    await client.unary(enqueue, task_req(aid("a0", run)), pb.EnqueueResponse)
    parents = [f"b{i}" for i in range(10)]
    for name in parents:
        await client.unary(enqueue, task_req(aid(name, run), parent="a0"), pb.EnqueueResponse)
    made = 11
    deepest = ""
    i = 0
    while made < size or not deepest:
        parent = parents[i % len(parents)]
        child = f"c{i}"
        await client.unary(enqueue, task_req(aid(child, run), parent=parent), pb.EnqueueResponse)
        deepest = f"d{i}"
        await client.unary(enqueue, task_req(aid(deepest, run), parent=child), pb.EnqueueResponse)
        made += 2
        i += 1
    return deepest


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


async def main(sizes: list[int], repeat: int) -> None:
    application = ActionsApplication(Config(port=0), open_store=open_memory_store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        async with ConnectClient(f"http://127.0.0.1:{port}") as client:
            print("| run size | event (µs) | GetRun (ms) | latency median / max (ms) |")
            print("| ---: | ---: | ---: | ---: |")
            for size in sizes:
                run = f"bench{size}"
                deep = await fill(client, run, size)
                store = application.store
                assert store is not None
                obj = await store.get(naming.object_name(aid(deep, run)))
                sent: dict[str, bytes] = {}
                started = time.perf_counter()
                for _ in range(repeat):
                    sent.clear()
                    _run_changes([WatchEvent("MODIFIED", obj)], sent)
                event = (time.perf_counter() - started) / repeat
                run_id = cpb.RunId(org="o", project="p", domain="development", name=run)
                times = []
                for _ in range(max(3, repeat // 20)):
                    started = time.perf_counter()
                    await application.console.get_run(cpb.GetRunRequest(run=run_id), ctx())
                    times.append(time.perf_counter() - started)
                get_run = statistics.median(times)
                latencies = await latency(client, run_id, deep, repeat // 10 or 1)
                print(
                    f"| {size} | {micros(event)} | {get_run * 1e3:.2f} | "
                    f"{statistics.median(latencies) * 1e3:.1f} / {max(latencies) * 1e3:.1f} |"
                )
        fanout = application.fanout
        assert fanout is not None
        with fanout.subscribe_events(ROOTS):
            keys = [RunKey("o", "p", "development", f"watched{i}") for i in range(100)]
            subs = [fanout.subscribe_events(key) for key in keys]
            for sub in subs:
                sub.__enter__()
            store = application.store
            assert store is not None
            obj = await store.get(naming.object_name(aid("a0", f"bench{sizes[0]}")))
            started = time.perf_counter()
            for _ in range(repeat * 100):
                fanout._event_subs_of(obj)
            per = (time.perf_counter() - started) / (repeat * 100)
            for sub in subs:
                sub.__exit__(None, None, None)
        print(f"\nfan-out, finding an event's console streams (100 runs watched): {micros(per)} µs")
        application.begin_shutdown()
        nursery.cancel_scope.cancel()


async def latency(client: ConnectClient, run: cpb.RunId, action: str, count: int) -> list[float]:
    out: list[float] = []
    responses = client.server_stream(
        CONSOLE + "WatchRun", cpb.WatchRunRequest(run=run), cpb.WatchRunResponse
    )
    try:
        async for message in responses:
            if message.HasField("snapshot_end"):
                break
        phases = [phase_pb2.ACTION_PHASE_RUNNING, phase_pb2.ACTION_PHASE_QUEUED]
        for n in range(count):
            phase = phases[n % 2]
            started = time.perf_counter()
            await client.unary(
                ACTIONS + "Update",
                update_req(aid(action, run.name), phase, attempt=n + 1),
                pb.UpdateResponse,
            )
            async for message in responses:
                if message.action.name == action and message.action.attempts == n + 1:
                    break
            out.append(time.perf_counter() - started)
    finally:
        await responses.aclose()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="13,100,1000")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, [int(s) for s in args.sizes.split(",")], args.repeat)
