"""Many writers and many watchers: every watcher converges on the store's final state."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from actions_harness import (
    DirectClient,
    Env,
    aid,
    bool_literal,
    condition_req,
    next_update,
    open_env,
    read_snapshot,
    task_req,
    update_req,
    wait_until,
)
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P

from actions import naming, objects
from actions.fanout import FanOut
from actions.service import ActionsService
from actions.store.embedded import EmbeddedStore
from connect_proto._errors import Code, RpcError

PARENTS = ["p0", "p1", "p2"]
CHILDREN = 20
PROGRESS = [
    P.ACTION_PHASE_WAITING_FOR_RESOURCES,
    P.ACTION_PHASE_INITIALIZING,
    P.ACTION_PHASE_RUNNING,
]
ENDS = [P.ACTION_PHASE_SUCCEEDED, P.ACTION_PHASE_FAILED, P.ACTION_PHASE_TIMED_OUT]
SOFT = (Code.FAILED_PRECONDITION, Code.NOT_FOUND, Code.ALREADY_EXISTS)


class Watcher:
    """Behaves like the SDK informer: keeps a cache from snapshot + updates and rebuilds
    it from a fresh snapshot when the stream ends with UNAVAILABLE."""

    def __init__(self, env: Env, parent: str, delay: float = 0) -> None:
        self.delay = delay  # a slow reader
        self.env = env
        self.parent = parent
        self.view: dict[str, int] = {}
        self.resyncs = 0

    async def run(self) -> None:
        req = pb.WatchForUpdatesRequest(parent_action_id=aid(self.parent))
        while True:
            fresh: dict[str, int] = {}
            synced = False
            try:
                async with self.env.client.watch(req) as stream:
                    while True:
                        msg = await stream.next()
                        if self.delay:
                            await trio.sleep(self.delay)
                        if msg.HasField("control_message"):
                            synced = True
                            fresh.pop(self.parent, None)
                            self.view = fresh
                            continue
                        u = msg.action_update
                        (self.view if synced else fresh)[u.action_id.name] = u.phase
            except RpcError as exc:
                assert exc.code == Code.UNAVAILABLE, exc
                self.resyncs += 1


async def writer(env: Env, rng: random.Random, names: list[tuple[str, str]]) -> None:
    for parent, child in names:
        try:
            if rng.random() < 0.1:
                await env.client.enqueue(condition_req(aid(child), parent))
            else:
                await env.client.enqueue(task_req(aid(child), parent=parent))
        except RpcError as exc:
            assert exc.code in SOFT, exc
            continue
        await trio.lowlevel.checkpoint()
    for _ in range(3):
        for _parent, child in rng.sample(names, len(names)):
            r = rng.random()
            try:
                if r < 0.05:
                    await env.client.abort(pb.AbortRequest(action_id=aid(child), reason="test"))
                elif r < 0.25:
                    await env.client.update(update_req(aid(child), rng.choice(ENDS)))
                else:
                    await env.client.update(update_req(aid(child), rng.choice(PROGRESS)))
            except RpcError as exc:
                assert exc.code in SOFT, exc


async def expected_view(env: Env, parent: str) -> dict[str, int]:
    items, _ = await env.store.list(naming.children_selector(aid(parent)))
    return {o["spec"]["actionName"]: objects.phase_of_object(o) for o in items}


@pytest.mark.parametrize(
    ("mode", "subscriber_buffer"),
    [("direct", 1000), ("direct", 3), ("wire", 1000), ("wire", 3)],
)
async def test_many_writers_many_watchers_converge(mode: str, subscriber_buffer: int) -> None:
    rng = random.Random(1234 + subscriber_buffer)
    async with open_env(mode, subscriber_buffer=subscriber_buffer) as env:
        await env.client.enqueue(task_req(aid("a0")))
        for p in PARENTS:
            await env.client.enqueue(task_req(aid(p), parent="a0"))
        # With the tiny buffer, one watcher per parent reads slowly and gets resynced.
        watchers = [
            Watcher(env, p, delay=0.01 if (k == 0 and subscriber_buffer < 10) else 0)
            for p in PARENTS
            for k in range(3)
        ]
        names = [(p, f"{p}c{i}") for p in PARENTS for i in range(CHILDREN)]
        async with trio.open_nursery() as nursery:
            for w in watchers:
                nursery.start_soon(w.run)
            async with trio.open_nursery() as writers:
                for k in range(6):
                    part = names[k::6]
                    writers.start_soon(writer, env, random.Random(rng.random()), part)
            expected = {p: await expected_view(env, p) for p in PARENTS}
            deleted = {p: {c for q, c in names if q == p} - set(expected[p]) for p in PARENTS}

            def converged(w: Watcher) -> bool:
                live = {k: v for k, v in w.view.items() if k in expected[w.parent]}
                gone_ok = all(
                    w.view[k] == P.ACTION_PHASE_ABORTED or w.view[k] in (*ENDS,)
                    for k in w.view
                    if k in deleted[w.parent]
                )
                return live == expected[w.parent] and gone_ok

            await wait_until(lambda: all(converged(w) for w in watchers), 20, 0.05)
            nursery.cancel_scope.cancel()
        resyncs = sum(w.resyncs for w in watchers)
        print(f"resyncs={resyncs} metrics={env.fanout.metrics.snapshot()}")
        if subscriber_buffer == 3 and mode == "direct":
            # The tiny buffer forced the resync path, and the watchers still converged.
            # (Over the wire, socket buffers absorb a slow reader's backlog instead.)
            assert resyncs > 0
        await wait_until(lambda: env.fanout.registry_size() == 0)


async def test_concurrent_enqueue_of_same_action_creates_it_once() -> None:
    async with open_env("direct") as env:
        await env.client.enqueue(task_req(aid("a0")))
        results: list[str] = []

        async def one() -> None:
            try:
                await env.client.enqueue(task_req(aid("c1"), parent="a0"))
                results.append("ok")
            except RpcError as exc:
                results.append(exc.code.name)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        assert sorted(results) == ["ALREADY_EXISTS"] * 9 + ["ok"]


async def test_concurrent_signal_and_update_one_wins_cleanly() -> None:
    async with open_env("direct") as env:
        await env.client.enqueue(task_req(aid("a0")))
        await env.client.enqueue(condition_req(aid("k1"), "a0"))
        outcomes: list[Any] = []

        async def do(coro: Any) -> None:
            try:
                await coro
                outcomes.append("ok")
            except RpcError as exc:
                outcomes.append(exc.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                do,
                env.client.signal(
                    pb.SignalRequest(
                        action_id=aid("k1"), parent_action_name="a0", value=bool_literal(True)
                    )
                ),
            )
            nursery.start_soon(
                do, env.client.update(update_req(aid("k1"), P.ACTION_PHASE_TIMED_OUT))
            )
        obj = await env.store.get(naming.object_name(aid("k1")))
        phase = objects.phase_of_object(obj)
        assert phase in (P.ACTION_PHASE_SUCCEEDED, P.ACTION_PHASE_TIMED_OUT)
        assert outcomes.count("ok") >= 1
        assert set(outcomes) <= {"ok", Code.FAILED_PRECONDITION}


async def _service_on(path: Any, nursery: trio.Nursery) -> tuple[Any, Any]:
    store = await EmbeddedStore.open(path)
    fanout = FanOut(store, workers=2)
    await nursery.start(fanout.run)
    return DirectClient(ActionsService(store, fanout)), store


async def test_two_services_on_one_data_dir_share_state(tmp_path: Any) -> None:
    """State lives only in the store: a watcher on one replica sees another's writes."""
    async with trio.open_nursery() as nursery:
        a, store_a = await _service_on(tmp_path, nursery)
        b, store_b = await _service_on(tmp_path, nursery)
        await a.enqueue(task_req(aid("a0")))
        async with b.watch(pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))) as stream:
            with trio.fail_after(5):
                assert set(await read_snapshot(stream)) == {"a0"}
            await a.enqueue(task_req(aid("c1"), parent="a0"))
            u = await next_update(stream)
            assert (u.action_id.name, u.phase) == ("c1", P.ACTION_PHASE_QUEUED)
            await a.update(update_req(aid("c1"), P.ACTION_PHASE_RUNNING))
            while u.phase != P.ACTION_PHASE_RUNNING:
                u = await next_update(stream)
        nursery.cancel_scope.cancel()
    await store_a.aclose()
    await store_b.aclose()


async def test_restart_keeps_state_and_a_reconnecting_watcher_gets_it(tmp_path: Any) -> None:
    async with trio.open_nursery() as nursery:
        client, store = await _service_on(tmp_path, nursery)
        await client.enqueue(task_req(aid("a0")))
        await client.enqueue(task_req(aid("c1"), parent="a0"))
        await client.update(update_req(aid("c1"), P.ACTION_PHASE_SUCCEEDED))
        nursery.cancel_scope.cancel()
    await store.aclose()
    async with trio.open_nursery() as nursery:
        client, store = await _service_on(tmp_path, nursery)
        async with client.watch(pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))) as s:
            with trio.fail_after(5):
                snap = await read_snapshot(s)
        assert snap["c1"].phase == P.ACTION_PHASE_SUCCEEDED
        await expect_already_exists(client)
        nursery.cancel_scope.cancel()
    await store.aclose()


async def expect_already_exists(client: Any) -> None:
    try:
        await client.enqueue(task_req(aid("c1"), parent="a0"))
    except RpcError as exc:
        assert exc.code == Code.ALREADY_EXISTS
    else:
        raise AssertionError("re-enqueue after restart must be ALREADY_EXISTS")
