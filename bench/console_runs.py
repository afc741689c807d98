"""Cost of the read API with a large store (prints figures; nothing is asserted).

    .venv/bin/python bench/console_runs.py [--actions 100000] [--per-run 10] [--repeat 20]

Fills an in-memory embedded store through the service's Enqueue (``--per-run`` actions per
run: one root and its children; one root in 7 RUNNING, one in 500 FAILED), then times
ConsoleService calls made in-process and over HTTP/1.1 Connect JSON against the served app:
the first page of runs, a page deep in the listing, the phase and project filters, and
GetRun. For scale it also times what a page would cost without the roots index: listing
every object, or every root through the label index, decoding and sorting them (3 calls
each). Medians of ``--repeat`` calls, in milliseconds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests" / "support", ROOT / "src"):
    sys.path.insert(0, str(_path))

import trio  # noqa: E402
from actions_harness import aid, task_req, update_req  # noqa: E402
from flyteidl2.common import phase_pb2  # noqa: E402

from actions._gen.actions.console.v1 import console_pb2 as cpb  # noqa: E402
from actions.app import ActionsApplication  # noqa: E402
from actions.config import Config  # noqa: E402
from actions.console.service import ConsoleService  # noqa: E402
from actions.service import ActionsService  # noqa: E402
from actions.store._roots import RootOrder  # noqa: E402
from actions.store.base import Store  # noqa: E402
from actions.store.embedded import EmbeddedStore  # noqa: E402
from connect_proto import ConnectClient, RequestContext  # noqa: E402
from connect_proto._headers import Headers  # noqa: E402
from connect_proto._server.serve import make_config  # noqa: E402
from connect_proto._server.serve import serve as serve_asgi  # noqa: E402

CONSOLE = "/flyte_actions.console.v1.ConsoleService/"


def ctx(method: str) -> RequestContext:
    return RequestContext(
        method=CONSOLE + method, protocol="direct", request_headers=Headers(), deadline=math.inf
    )


async def fill(store: Store, actions: int, per_run: int) -> int:
    service = ActionsService(store)
    runs = max(actions // per_run, 1)
    todo = iter(range(runs))

    async def worker() -> None:
        for i in todo:
            run = f"run-{i:06d}"
            project = f"proj{i % 10}"
            await service.enqueue(task_req(aid("a0", run, project=project)), ctx("Enqueue"))
            for c in range(per_run - 1):
                request = task_req(aid(f"c{c}", run, project=project), parent="a0")
                await service.enqueue(request, ctx("Enqueue"))
            phase = None
            if i % 500 == 0:
                phase = phase_pb2.ACTION_PHASE_FAILED
            elif i % 7 == 0:
                phase = phase_pb2.ACTION_PHASE_RUNNING
            if phase is not None:
                await service.update(update_req(aid("a0", run, project=project), phase), ctx("U"))

    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(worker)
    return runs


async def median_ms(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def deep_token(svc: ConsoleService, pages: int) -> str:
    request = cpb.ListRunsRequest(page_size=50)
    for _ in range(pages):
        response = await svc.list_runs(request, ctx("ListRuns"))
        request.page_token = response.next_page_token
    return request.page_token


def roots_index_add_us(size: int) -> float:
    order = RootOrder()
    for i in range(size):
        order.add(f"n{i:07d}", f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z")
    started = time.perf_counter()
    for i in range(1000):
        order.add(f"x{i:07d}", "2026-01-01T00:30:00Z")
    for i in range(1000):
        order.discard(f"x{i:07d}")
    return (time.perf_counter() - started) / 2000 * 1e6


async def main(args: argparse.Namespace) -> None:
    store = await EmbeddedStore.open(None)
    started = time.perf_counter()
    runs = await fill(store, args.actions, args.per_run)
    filled = time.perf_counter() - started
    total = len((await store.list({}))[0])
    print(f"stored: {total} actions in {runs} runs (filled in {filled:.1f} s)")
    svc = ConsoleService(lambda: store)
    deep = await deep_token(svc, 100)
    run = cpb.RunId(org="o", project="proj3", domain="development", name="run-000003")
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("ListRuns page 1 (50 runs)",
         lambda: svc.list_runs(cpb.ListRunsRequest(page_size=50), ctx("ListRuns"))),
        ("ListRuns page 101 (by token)",
         lambda: svc.list_runs(cpb.ListRunsRequest(page_size=50, page_token=deep),
                               ctx("ListRuns"))),
        ("ListRuns phase=RUNNING (1 in 7)",
         lambda: svc.list_runs(cpb.ListRunsRequest(phases=["RUNNING"]), ctx("ListRuns"))),
        ("ListRuns phase=FAILED (1 in 500; scan budget)",
         lambda: svc.list_runs(cpb.ListRunsRequest(phases=["FAILED"]), ctx("ListRuns"))),
        ("ListRuns project=proj3 (1 in 10)",
         lambda: svc.list_runs(cpb.ListRunsRequest(project="proj3"), ctx("ListRuns"))),
        (f"GetRun ({args.per_run} actions)",
         lambda: svc.get_run(cpb.GetRunRequest(run=run), ctx("GetRun"))),
        ("without the index: list every object, pick roots, sort",
         lambda: _scan_all(store)),
        ("without the index: list roots by label, sort",
         lambda: _scan_roots(store)),
    ]  # fmt: skip
    print(f"{'in-process call':58} median ms (of {args.repeat})")
    results = {}
    for name, call in cases:
        # The scans without the index take seconds at 100,000 actions: 3 of them will do.
        repeat = args.repeat if name.startswith(("ListRuns", "GetRun")) else 3
        results[name] = await median_ms(call, repeat)
        print(f"  {name:56} {results[name]:9.2f}")
    ratio = results[cases[6][0]] / results[cases[0][0]]
    print(f"  ratio: scan every object / page 1 = {ratio:.0f}x")
    print(f"  roots index add+discard at {runs} roots: {roots_index_add_us(runs):.2f} us each")
    await over_http(store, deep, args.repeat)


async def _scan_all(store: Store) -> list[Any]:
    objects, _ = await store.list({})
    roots = [o for o in objects if o["metadata"]["labels"].get("flyte.org/is-root") == "true"]
    roots.sort(key=lambda o: (o["metadata"]["creationTimestamp"], o["metadata"]["name"]))
    return roots[-50:]


async def _scan_roots(store: Store) -> list[Any]:
    roots, _ = await store.list({"flyte.org/is-root": "true"})
    roots.sort(key=lambda o: (o["metadata"]["creationTimestamp"], o["metadata"]["name"]))
    return roots[-50:]


async def over_http(store: Store, deep: str, repeat: int) -> None:
    async def same_store(_: Config) -> Store:
        return store

    application = ActionsApplication(Config(port=0), open_store=same_store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        run = cpb.RunId(org="o", project="proj3", domain="development", name="run-000003")
        print(f"{'over HTTP/1.1, Connect JSON (one connection)':58} median ms (of {repeat})")
        async with ConnectClient(f"http://127.0.0.1:{port}", codec="json") as client:
            for name, path, request, response_type in (
                ("ListRuns page 1 (50 runs)", "ListRuns", cpb.ListRunsRequest(page_size=50),
                 cpb.ListRunsResponse),
                ("ListRuns page 101", "ListRuns",
                 cpb.ListRunsRequest(page_size=50, page_token=deep), cpb.ListRunsResponse),
                ("GetRun", "GetRun", cpb.GetRunRequest(run=run), cpb.GetRunResponse),
            ):  # fmt: skip

                async def call(p: str = path, r: Any = request, t: Any = response_type) -> Any:
                    return await client.unary(CONSOLE + p, r, t)

                print(f"  {name:56} {await median_ms(call, repeat):9.2f}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=100_000)
    parser.add_argument("--per-run", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=20)
    trio.run(main, parser.parse_args())
