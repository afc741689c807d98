#!/usr/bin/env python
"""The service's own cost per call, without the transport: ActionsService handlers
called in-process on an embedded store (a SQLite file in a temp directory), timed and
profiled with cProfile.

Per operation: wall time per call and the functions with the most own time. What is
left once this is subtracted from bench/side_by_side.py's server CPU per call is the
HTTP/2 server and the RPC layer.

    python bench/service_profile.py                 # ~30 s
    python bench/service_profile.py --parents 1000 --top 12
    python bench/service_profile.py --top 0         # times only, no profiler overhead
    PYTHONPATH=/other/checkout/src python bench/service_profile.py   # another version

Operations: ``enqueue`` (roots, then children), ``update-noop`` (an Update that
changes nothing, as in the h2load run), ``update-write`` (an Update that writes: phase
alternating INITIALIZING / RUNNING), ``snapshot`` (what opening a watch stream reads:
the parent and its children).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _watch_client as wc
import watch_fanout as wf

from actions.service import ActionsService
from actions.store.embedded import EmbeddedStore


def update(run: str, name: str, phase: int) -> pb.UpdateRequest:
    return pb.UpdateRequest(
        action_id=wc.action_id(run, name), attempt=1, status={"phase": phase, "attempts": 1}
    )


async def measure(
    label: str, calls: list[Callable[[], Awaitable[Any]]], top: int, concurrency: int
) -> None:
    profile = cProfile.Profile()
    limit = trio.CapacityLimiter(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with limit:
            await call()

    t0, cpu0 = time.perf_counter(), time.process_time()
    if top:
        profile.enable()
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(one, call)
    profile.disable()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"\n== {label}: {len(calls)} calls, {elapsed / len(calls) * 1e6:.0f} us wall and "
          f"{cpu / len(calls) * 1e6:.0f} us CPU per call ({concurrency} in flight"
          f"{', profiler on' if top else ''})")  # fmt: skip
    if not top:
        return
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print("\n".join(line for line in lines[start:] if line.strip()))


async def main(args: argparse.Namespace) -> None:
    store = await EmbeddedStore.open(Path(tempfile.mkdtemp(prefix="service-profile-")))
    service = ActionsService(store, None)
    try:
        roots = [wf.task_request(*wf.parent_id(p), None) for p in range(args.parents)]
        children = [
            wf.task_request(wf.parent_id(g // args.children)[0], wf.child_name(g), "a0")
            for g in range(args.parents * args.children)
        ]
        for label, requests in (("enqueue (roots)", roots), ("enqueue (children)", children)):
            await measure(
                label,
                [lambda r=r: service.enqueue(r, None) for r in requests],  # type: ignore[arg-type]
                args.top,
                32,
            )
        kids = [
            (wf.parent_id(g // args.children)[0], wf.child_name(g))
            for g in range(args.parents * args.children)
        ]
        running = phase_pb2.ACTION_PHASE_RUNNING
        initializing = phase_pb2.ACTION_PHASE_INITIALIZING
        await measure(  # leaves QUEUED: every call writes
            "update-write",
            [lambda k=k: service.update(update(*k, running), None) for k in kids],  # type: ignore[arg-type]
            args.top,
            32,
        )
        await measure(
            "update-noop",
            [lambda k=k: service.update(update(*k, running), None) for k in kids],  # type: ignore[arg-type]
            args.top,
            32,
        )
        await measure(
            "update-write (again)",
            [lambda k=k: service.update(update(*k, initializing), None) for k in kids],  # type: ignore[arg-type]
            args.top,
            32,
        )
        parents = [wc.action_id(*wf.parent_id(p)) for p in range(args.parents)]
        await measure(
            "snapshot",
            [lambda p=p: service._snapshot(p) for p in parents],
            args.top,
            32,
        )
    finally:
        await store.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parents", type=int, default=1000)
    ap.add_argument("--children", type=int, default=5)
    ap.add_argument("--top", type=int, default=8, help="functions shown; 0: no profiler")
    trio.run(main, ap.parse_args())
