"""``/metrics`` counts the console's open live streams (WatchRun, WatchRuns) as
``actions_console_streams``, next to ``actions_watch_subscribers``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio
from actions_harness import DOMAIN, ORG, PROJECT, aid, task_req
from flyteidl2.actions import actions_service_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.app import ActionsApplication, open_memory_store
from actions.config import Config
from connect_proto import ConnectClient
from connect_proto._server.serve import make_config
from connect_proto._server.serve import serve as serve_asgi

CONSOLE = "/flyte_actions.console.v1.ConsoleService/"
ACTIONS = "/flyteidl2.actions.ActionsService/"


@asynccontextmanager
async def served() -> AsyncIterator[int]:
    application = ActionsApplication(Config(port=0), open_store=open_memory_store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


async def gauge(http: httpx.AsyncClient, name: str) -> float:
    response = await http.get("/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


async def test_open_console_streams_are_a_gauge() -> None:
    run = cpb.RunId(org=ORG, project=PROJECT, domain=DOMAIN, name="r1")
    async with (
        served() as port,
        ConnectClient(f"http://127.0.0.1:{port}") as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
    ):
        await client.unary(ACTIONS + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        assert await gauge(http, "actions_console_streams") == 0
        one_run = client.server_stream(
            CONSOLE + "WatchRun", cpb.WatchRunRequest(run=run), cpb.WatchRunResponse
        )
        all_runs = client.server_stream(
            CONSOLE + "WatchRuns", cpb.WatchRunsRequest(), cpb.WatchRunsResponse
        )
        try:
            with trio.fail_after(10):
                while not (await anext(one_run)).HasField("snapshot_end"):
                    pass
                assert await gauge(http, "actions_console_streams") == 1
                while not (await anext(all_runs)).HasField("snapshot_end"):
                    pass
                assert await gauge(http, "actions_console_streams") == 2
                # Not WatchForUpdates subscriptions: that gauge is separate.
                assert await gauge(http, "actions_watch_subscribers") == 0
        finally:
            await one_run.aclose()
            await all_runs.aclose()
        with trio.fail_after(10):
            while await gauge(http, "actions_console_streams"):  # noqa: ASYNC110 - a scrape
                await trio.sleep(0.02)
