"""The console's live streams: WatchRun (one run, every action at any depth) and
WatchRuns (the runs list), on the watch fan-out; and GetAction, which the CLI's watch
asks for a NOTE (a condition's prompt, an abort's reason)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from actions_harness import (
    DOMAIN,
    ORG,
    PROJECT,
    Env,
    WriteDuringList,
    aid,
    condition_req,
    open_env,
    serve_with_tokens,
    task_req,
    update_req,
    wait_until,
)
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.core import types_pb2

import actions.app
from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.console.recent import RecentDeletions
from actions.console.service import ConsoleService
from actions.store.base import WatchEvent
from connect_proto import Code, ConnectClient, RequestContext, RpcError
from connect_proto._headers import Headers

CONSOLE = "/flyte_actions.console.v1.ConsoleService/"
ACTIONS = "/flyteidl2.actions.ActionsService/"
RUNNING = phase_pb2.ACTION_PHASE_RUNNING
SUCCEEDED = phase_pb2.ACTION_PHASE_SUCCEEDED


def ctx(method: str) -> RequestContext:
    return RequestContext(
        method=CONSOLE + method, protocol="direct", request_headers=Headers(), deadline=math.inf
    )


def run_id(name: str = "r1") -> cpb.RunId:
    return cpb.RunId(org=ORG, project=PROJECT, domain=DOMAIN, name=name)


class Stream:
    """A console stream called in-process; its send blocks until the test reads
    (a reader whose flow-control window is full)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self.receive = receive

    async def next(self, seconds: float = 5) -> Any:
        with trio.fail_after(seconds):
            message = await self.receive.receive()
        if isinstance(message, BaseException):
            raise message
        return message

    async def about(self, name: str) -> Any:
        """The next message about action or run ``name`` (others are skipped)."""
        with trio.fail_after(5):
            while True:
                message = await self.next()
                which = message.WhichOneof("event")
                body = getattr(message, which)
                if which == "run":
                    body = body.run
                if body.name == name:
                    return message

    async def until(self, wanted: Any) -> Any:
        """The first message ``wanted(message)`` is true of; earlier ones (restatements of
        an older state) are skipped."""
        with trio.fail_after(5):
            while True:
                message = await self.next()
                if wanted(message):
                    return message

    async def snapshot(self) -> list[Any]:
        out = []
        while True:
            message = await self.next()
            if message.HasField("snapshot_end"):
                return out
            out.append(message)


@asynccontextmanager
async def stream(handler: Any, request: Any, method: str) -> AsyncIterator[Stream]:
    send, receive = trio.open_memory_channel[Any](0)

    async def run() -> None:
        try:
            await handler(request, ctx(method), send.send)
        except RpcError as exc:
            await send.send(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        try:
            yield Stream(receive)
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with open_env("direct") as e:
        yield e


def console(env: Env) -> ConsoleService:
    return ConsoleService(lambda: env.store, lambda: env.fanout)


async def deep_run(env: Env, run: str = "r1") -> None:
    """a0 -> b1..b5 (five parents) -> c1 under each b -> d1 under b1/c1: depth 3."""
    await env.client.enqueue(task_req(aid("a0", run)))
    for i in range(1, 6):
        await env.client.enqueue(task_req(aid(f"b{i}", run), parent="a0"))
        await env.client.enqueue(task_req(aid(f"c{i}", run), parent=f"b{i}"))
    await env.client.enqueue(task_req(aid("d1", run), parent="c1"))


async def test_watch_run_snapshot_then_every_change_at_any_depth(env: Env) -> None:
    await deep_run(env)
    svc = console(env)
    async with stream(svc.watch_run, cpb.WatchRunRequest(run=run_id()), "WatchRun") as s:
        snapshot = [m.action for m in await s.snapshot()]
        names = [a.name for a in snapshot]
        assert names[0] == "a0"  # parents before children
        assert sorted(names) == sorted(
            ["a0", "d1"] + [f"{x}{i}" for x in "bc" for i in range(1, 6)]
        )
        assert names.index("c1") < names.index("d1")

        # A change three levels down, the root's own phase, a new action: all streamed.
        await env.client.update(update_req(aid("d1"), RUNNING))
        changed = (await s.next()).action
        assert (changed.name, changed.phase, changed.parent) == ("d1", "RUNNING", "c1")
        assert [h.phase for h in changed.phase_history][-1] == "RUNNING"
        assert changed.attempts == 1
        await env.client.update(update_req(aid("a0"), RUNNING))
        assert (await s.next()).action.name == "a0"
        ask = condition_req(aid("q1"), "c5", simple=types_pb2.INTEGER)
        ask.action.condition.prompt = "How many?"
        await env.client.enqueue(ask)
        added = (await s.next()).action
        assert (added.name, added.parent, added.condition.prompt) == ("q1", "c5", "How many?")
        assert (await s.about("q1")).action.phase == "PAUSED"  # waits for a signal

        # An abort: its reason is written, then the action deleted; the deletion carries
        # the last state (the reason too). The write may be merged into the deletion.
        await env.client.abort(pb.AbortRequest(action_id=aid("d1"), reason="not needed"))
        deleted = await s.about("d1")
        if deleted.WhichOneof("event") == "action":
            assert deleted.action.abort_reason == "not needed"
            deleted = await s.about("d1")
        assert deleted.WhichOneof("event") == "deleted"
        assert (deleted.deleted.name, deleted.deleted.abort_reason) == ("d1", "not needed")


async def test_watch_run_sends_only_its_run_and_resumes_nothing_twice(env: Env) -> None:
    await deep_run(env, "r1")
    await deep_run(env, "r2")
    svc = console(env)
    async with stream(svc.watch_run, cpb.WatchRunRequest(run=run_id("r1")), "WatchRun") as s:
        await s.snapshot()
        await env.client.update(update_req(aid("c3", "r2"), RUNNING))  # another run
        await env.client.update(update_req(aid("c3", "r1"), RUNNING))
        assert (await s.next()).action.name == "c3"
        # The same state written again (attempt count and phase unchanged) is not resent.
        await env.client.update(update_req(aid("c3", "r1"), RUNNING))
        await env.client.update(update_req(aid("c4", "r1"), SUCCEEDED))
        assert (await s.next()).action.name == "c4"


async def test_watch_run_falls_behind_and_is_resynced_not_dropped() -> None:
    async with open_env("direct", subscriber_buffer=2) as env:
        await deep_run(env)
        svc = console(env)
        async with stream(svc.watch_run, cpb.WatchRunRequest(run=run_id()), "WatchRun") as s:
            await s.snapshot()
            # The reader stops reading: the handler holds one change in its send, and
            # the buffer takes two more actions; the next one is one too many.
            for name in ("b1", "b2", "b3", "b4", "b5"):
                await env.client.update(update_req(aid(name), RUNNING))
            await wait_until(lambda: env.fanout.metrics.subscriber_resyncs)
            assert (await s.next()).action.name == "b1"  # what it had taken: sent
            with pytest.raises(RpcError) as info:
                await s.next()
            assert info.value.code == Code.UNAVAILABLE
            assert "resync" in info.value.message
        assert env.fanout.event_subscriber_count() == 0


@pytest.mark.parametrize("backend", ["embedded", "kubernetes"])
async def test_watch_run_change_between_subscribe_and_snapshot_is_not_missed(
    backend: str,
) -> None:
    """A write landing after the snapshot was listed (but before it is sent) still
    reaches the stream: it subscribed before listing."""

    holder: dict[str, WriteDuringList] = {}

    def wrap(store: Any) -> WriteDuringList:
        holder["w"] = WriteDuringList(store)
        return holder["w"]

    async with open_env("direct", wrap_store=wrap, backend=backend) as env:
        await deep_run(env)
        svc = ConsoleService(lambda: holder["w"], lambda: env.fanout)
        holder["w"].armed = True
        async with stream(svc.watch_run, cpb.WatchRunRequest(run=run_id()), "WatchRun") as s:
            snapshot = {m.action.name: m.action for m in await s.snapshot()}
            assert snapshot["c1"].phase == "QUEUED"
            assert (await s.about("c1")).action.phase == "RUNNING"


async def test_watch_run_errors(env: Env) -> None:
    svc = console(env)
    async with stream(svc.watch_run, cpb.WatchRunRequest(run=run_id("nope")), "WatchRun") as s:
        with pytest.raises(RpcError) as info:
            await s.next()
        assert info.value.code == Code.NOT_FOUND
    bad = cpb.WatchRunRequest(run=cpb.RunId(project=PROJECT))
    async with stream(svc.watch_run, bad, "WatchRun") as s:
        with pytest.raises(RpcError) as info:
            await s.next()
        assert info.value.code == Code.INVALID_ARGUMENT
    assert env.fanout.event_subscriber_count() == 0
    idle = ConsoleService(lambda: env.store)  # no fan-out: starting or stopping
    async with stream(idle.watch_run, cpb.WatchRunRequest(run=run_id()), "WatchRun") as s:
        with pytest.raises(RpcError) as info:
            await s.next()
        assert info.value.code == Code.UNAVAILABLE


async def test_watch_runs_snapshot_then_new_and_changed_runs(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0", "old")))
    svc = console(env)
    request = cpb.WatchRunsRequest(project=PROJECT)
    async with stream(svc.watch_runs, request, "WatchRuns") as s:
        snapshot = await s.snapshot()
        assert [m.run.run.name for m in snapshot] == ["old"]
        await env.client.enqueue(task_req(aid("a0", "new")))
        # (The enqueue of "old" may still be on its way through the fan-out when the
        # stream subscribed: the runs list may restate a run.)
        created = (await s.about("new")).run
        assert (created.run.name, created.phase) == ("new", "QUEUED")
        # Children do not concern the runs list; another project is filtered out.
        await env.client.enqueue(task_req(aid("b1", "new"), parent="a0"))
        await env.client.enqueue(task_req(aid("a0", "other", project="elsewhere")))
        await env.client.update(update_req(aid("a0", "new"), RUNNING))
        changed = await s.until(lambda m: m.run.phase == "RUNNING")
        assert changed.run.run.name == "new"
        await env.client.abort(pb.AbortRequest(action_id=aid("a0", "old"), reason="x"))
        removed = await s.about("old")
        if removed.WhichOneof("event") == "run":  # the abort reason's write
            removed = await s.about("old")
        assert removed.WhichOneof("event") == "removed"
        assert removed.removed.name == "old"


async def test_watch_runs_phase_filter(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0", "one")))
    svc = console(env)
    request = cpb.WatchRunsRequest(phases=["running"])
    async with stream(svc.watch_runs, request, "WatchRuns") as s:
        assert await s.snapshot() == []
        await env.client.update(update_req(aid("a0", "one"), RUNNING))
        # Its enqueue (QUEUED: removed) may still be on its way.
        first = await s.until(lambda m: m.WhichOneof("event") == "run")
        assert (first.run.run.name, first.run.phase) == ("one", "RUNNING")
        await env.client.update(update_req(aid("a0", "one"), SUCCEEDED))
        assert (await s.next()).removed.name == "one"
    bad = cpb.WatchRunsRequest(phases=["sleeping"])
    async with stream(svc.watch_runs, bad, "WatchRuns") as s:
        with pytest.raises(RpcError) as info:
            await s.next()
        assert info.value.code == Code.INVALID_ARGUMENT


async def test_watch_runs_snapshot_page_ends_with_its_token(env: Env) -> None:
    for i in range(3):
        await env.client.enqueue(task_req(aid("a0", f"r{i}")))
    svc = console(env)
    async with stream(svc.watch_runs, cpb.WatchRunsRequest(page_size=2), "WatchRuns") as s:
        runs = []
        while True:
            message = await s.next()
            if message.HasField("snapshot_end"):
                break
            runs.append(message.run.run.name)
        assert len(runs) == 2
        page = await svc.list_runs(
            cpb.ListRunsRequest(page_size=2, page_token=message.snapshot_end.next_page_token),
            ctx("ListRuns"),
        )
        assert len(page.runs) == 1
        assert sorted([*runs, page.runs[0].run.name]) == ["r0", "r1", "r2"]


def deleted_obj(name: str, **parts: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {}, **parts}


def test_recent_deletions_are_bounded_in_number_and_age() -> None:
    now = [0.0]
    recent = RecentDeletions(capacity=2, max_age=10, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        recent.observe(WatchEvent("DELETED", deleted_obj(name)))
    assert (recent.get("a"), len(recent)) == (None, 2)  # the oldest made room
    assert recent.get("c") == deleted_obj("c")
    recent.observe(WatchEvent("ADDED", deleted_obj("c")))  # the name is used again
    assert recent.get("c") is None
    now[0] = 11
    assert recent.get("b") is None  # too old


def test_recent_deletions_keep_only_what_a_view_shows() -> None:
    recent = RecentDeletions()
    big = deleted_obj(
        "d",
        metadata={"name": "d", "managedFields": ["..."]},
        spec={"actionName": "d", "taskTemplate": "x" * 10_000},
        status={"attempts": 1, "pluginState": "y" * 10_000},
    )
    recent.observe(WatchEvent("DELETED", big))
    assert recent.get("d") == {
        "metadata": {"name": "d"},
        "spec": {"actionName": "d"},
        "status": {"attempts": 1},
    }


TOKENS = "tokens:\n  - {name: operator, token: op-token, allow: ['*']}\n"


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[ConnectClient]:
    async with (
        serve_with_tokens(tmp_path, TOKENS) as url,
        ConnectClient(url, headers={"authorization": "Bearer op-token"}) as client,
    ):
        yield client


async def test_get_action_live_and_recently_deleted_over_the_wire(tmp_path: Path) -> None:
    async with served(tmp_path) as client:
        await client.unary(ACTIONS + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        await client.unary(
            ACTIONS + "Enqueue", task_req(aid("b1"), parent="a0"), pb.EnqueueResponse
        )
        request = cpb.GetActionRequest(run=run_id(), name="b1")
        got = await client.unary(CONSOLE + "GetAction", request, cpb.GetActionResponse)
        assert (got.action.name, got.action.phase, got.deleted) == ("b1", "QUEUED", False)
        abort = pb.AbortRequest(action_id=aid("b1"), reason="wrong input")
        await client.unary(ACTIONS + "Abort", abort, pb.AbortResponse)
        with trio.fail_after(5):
            while True:
                got = await client.unary(CONSOLE + "GetAction", request, cpb.GetActionResponse)
                if got.deleted:
                    break
                await trio.sleep(0.02)
        assert got.action.abort_reason == "wrong input"
        for bad, code in (
            (cpb.GetActionRequest(run=run_id(), name="zz"), Code.NOT_FOUND),
            (cpb.GetActionRequest(run=run_id()), Code.INVALID_ARGUMENT),
            (cpb.GetActionRequest(name="b1"), Code.INVALID_ARGUMENT),
        ):
            with pytest.raises(RpcError) as info:
                await client.unary(CONSOLE + "GetAction", bad, cpb.GetActionResponse)
            assert info.value.code == code


async def test_watch_run_over_the_wire_and_its_stream_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions.app, "MAX_WATCH_RUN_STREAMS", 1)
    async with served(tmp_path) as client:
        await client.unary(ACTIONS + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        request = cpb.WatchRunRequest(run=run_id())
        path = CONSOLE + "WatchRun"
        responses = client.server_stream(path, request, cpb.WatchRunResponse)
        try:
            with trio.fail_after(5):
                first = await anext(responses)
                assert first.action.name == "a0"
                assert (await anext(responses)).HasField("snapshot_end")
                # A second one is over the bound.
                with pytest.raises(RpcError) as info:
                    async for _ in client.server_stream(path, request, cpb.WatchRunResponse):
                        pass
                assert info.value.code == Code.RESOURCE_EXHAUSTED
                await client.unary(
                    ACTIONS + "Enqueue", task_req(aid("b1"), parent="a0"), pb.EnqueueResponse
                )
                assert (await anext(responses)).action.name == "b1"
        finally:
            await responses.aclose()
