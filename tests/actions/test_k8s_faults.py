"""Kubernetes API faults under live WatchForUpdates streams, through the real service.

The service runs over the wire (Connect, HTTP/1.1) on the Kubernetes store, which talks to
the API emulator. Each test opens watch streams, breaks the API server in one way while
actions change (writes retried on UNAVAILABLE, as the SDK does), and ends with the same
check: every watcher's final view (including reconnects after UNAVAILABLE) equals the
store's final state, deleted actions reported ABORTED (or their terminal phase), and no
action ever moved backwards in a stream. Each test also checks that the fault really hit
the path it is about (a re-list happened, a write was refused...), so none passes idly.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from actions_harness import (
    Env,
    Retrying,
    WatcherView,
    aid,
    assert_final_views,
    assert_no_leaked_threads,
    condition_req,
    int_literal,
    open_emulator,
    open_env,
    store_children,
    task_req,
    update_req,
)
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P
from flyteidl2.core import types_pb2

from connect_proto._errors import Code, RpcError


@pytest.fixture(autouse=True, scope="module")
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert_no_leaked_threads(before)


# -- the workload ---------------------------------------------------------------------------

ROOT = aid("a0")


async def setup_run(client: Any) -> None:
    """a0 with task children c0..c4, condition k1, and grandchild g3 under c3."""
    await client.enqueue(task_req(ROOT))
    for name in ("c0", "c1", "c2", "c3", "c4"):
        await client.enqueue(task_req(aid(name), parent="a0"))
    await client.enqueue(condition_req(aid("k1"), "a0", types_pb2.INTEGER))
    await client.enqueue(task_req(aid("g3"), parent="c3"))


async def first_half(w: Retrying) -> None:
    await w.update(update_req(aid("c0"), P.ACTION_PHASE_RUNNING))
    await w.update(update_req(aid("c1"), P.ACTION_PHASE_INITIALIZING))
    await w.update(update_req(aid("c2"), P.ACTION_PHASE_SUCCEEDED))
    await w.enqueue(task_req(aid("c5"), parent="a0"))
    await w.abort(pb.AbortRequest(action_id=aid("c3"), reason="fault test"))  # and g3


async def second_half(w: Retrying) -> None:
    await w.update(update_req(aid("c0"), P.ACTION_PHASE_SUCCEEDED))
    await w.update(update_req(aid("c1"), P.ACTION_PHASE_FAILED))
    await w.signal(
        pb.SignalRequest(action_id=aid("k1"), parent_action_name="a0", value=int_literal(7))
    )
    await w.update(update_req(aid("c5"), P.ACTION_PHASE_RUNNING, attempt=2))
    await w.update(update_req(aid("c4"), P.ACTION_PHASE_RUNNING))
    await w.abort(pb.AbortRequest(action_id=aid("c2")))  # terminal: stays SUCCEEDED


EXPECTED_FINAL = {
    "c0": P.ACTION_PHASE_SUCCEEDED,
    "c1": P.ACTION_PHASE_FAILED,
    "c4": P.ACTION_PHASE_RUNNING,
    "c5": P.ACTION_PHASE_RUNNING,
    "k1": P.ACTION_PHASE_SUCCEEDED,
}


async def check_outcome(env: Env, views: list[WatcherView], early: int = 3) -> None:
    """The common end of every test: all watchers converge on the store's state; the
    first ``early`` views (watching since before ``first_half``) that never had to
    reconnect were told exactly what became of the deleted actions."""
    final = await assert_final_views(env.store, views)
    assert {n: u.phase for n, u in final.items()} == EXPECTED_FINAL
    assert final["k1"].value.scalar.primitive.integer == 7
    assert final["c5"].output_uri.endswith("/c5/2")
    for view in views[:early]:
        if view.resyncs:
            continue
        if view.parent == ROOT:
            assert view.state["c3"].phase == P.ACTION_PHASE_ABORTED
            assert view.state["c2"].phase == P.ACTION_PHASE_SUCCEEDED  # never ABORTED
        else:
            assert view.state["g3"].phase == P.ACTION_PHASE_ABORTED


@asynccontextmanager
async def service(
    emulator: Any = None, **store_options: Any
) -> AsyncIterator[tuple[Env, list[WatcherView], trio.Nursery]]:
    """The served app on the Kubernetes store; yields the env, an (empty) list the test
    adds watchers to, and a nursery to run them in (cancelled on exit)."""
    async with open_env(
        "wire", backend="kubernetes", emulator=emulator, store_options=store_options
    ) as env:
        views: list[WatcherView] = []
        async with trio.open_nursery() as nursery:
            try:
                yield env, views, nursery
            finally:
                nursery.cancel_scope.cancel()


async def watch(env: Env, views: list[WatcherView], nursery: trio.Nursery, parent: Any) -> None:
    view = WatcherView(env.client, parent)
    await nursery.start(view.run)
    views.append(view)


async def watch_all(env: Env, views: list[WatcherView], nursery: trio.Nursery) -> None:
    """Two watchers on the root, one on c3 (whose child g3 goes with it)."""
    for parent in (ROOT, ROOT, aid("c3")):
        await watch(env, views, nursery, parent)


def watch_requests(emu: Any) -> int:
    return sum(1 for _, path, *_ in list(emu.requests) if "watch=true" in path)


def answered(emu: Any, status: int) -> int:
    """How many requests the emulator answered with ``status``."""
    return sum(1 for _, _, code, *_ in list(emu.requests) if code == status)


async def wait_for(check: Any, within: float = 10) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - state of other threads, no event to wait on
            await trio.sleep(0.01)


# -- watch dropped ----------------------------------------------------------------------


async def test_watch_dropped_mid_stream_abruptly_and_cleanly() -> None:
    async with service() as (env, views, nursery):
        emu, store, w = env.emulator, env.store, Retrying(env.client)
        await setup_run(env.client)
        await watch_all(env, views, nursery)
        watches_before = watch_requests(emu)
        await first_half(w)
        emu.close_watches(abrupt=True)  # network fault: no final chunk
        # The informer re-watches (a close before that would find no watch to end).
        await wait_for(lambda: watch_requests(emu) >= watches_before + 1)
        await w.update(update_req(aid("c4"), P.ACTION_PHASE_INITIALIZING))
        watches_between = watch_requests(emu)
        emu.close_watches()  # clean server-side end
        await second_half(w)
        await check_outcome(env, views)
        # The informer re-watched from its last resourceVersion: no re-list, nothing lost,
        # and no stream had to start over.
        await wait_for(lambda: watch_requests(emu) >= watches_between + 1)
        assert store.relists == 0
        assert [v.resyncs for v in views] == [0, 0, 0]
        assert store.ready() == (True, "ok")


async def test_watch_dropped_after_every_few_events() -> None:
    async with service() as (env, views, nursery):
        emu, w = env.emulator, Retrying(env.client)
        await setup_run(env.client)
        await watch_all(env, views, nursery)
        emu.faults.close_watches_after(2, abrupt=True)
        await first_half(w)
        await second_half(w)
        await check_outcome(env, views)
        assert watch_requests(emu) >= 5
        assert env.store.relists == 0
        assert [v.resyncs for v in views] == [0, 0, 0]


# -- history compacted: 410 Gone, re-list ---------------------------------------------------


async def test_history_compacted_relist_emits_the_differences() -> None:
    async with service() as (env, views, nursery):
        emu, store, w = env.emulator, env.store, Retrying(env.client)
        await setup_run(env.client)
        await watch_all(env, views, nursery)
        # Keep the informer from re-watching (collection GETs fail; object reads and
        # writes still work), change things, then drop the history it would resume from.
        emu.faults.fail_for(60, 500, path=r"/taskactions$", verbs=["GET"])
        emu.close_watches()
        await first_half(w)
        await second_half(w)
        await wait_for(lambda: not store.api_reachable)
        emu.compact()
        emu.faults.reset()
        await check_outcome(env, views)
        # Changed ones came as MODIFIED, c3/g3/c2 (vanished) as DELETED, c5 as ADDED,
        # all on the streams that were open all along.
        assert store.relists == 1
        assert [v.resyncs for v in views] == [0, 0, 0]
        await wait_for(lambda: store.ready()[0])


# -- API errors: 500 and 429 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 429, "retry_after": 1},
        {"status": 429, "retry_after": 1, "plain": True},
    ],
    ids=["500", "429-status", "429-flow-control"],
)
async def test_api_errors_for_a_while(fault: dict[str, Any]) -> None:
    async with service() as (env, views, nursery):
        emu, store, w = env.emulator, env.store, Retrying(env.client)
        await setup_run(env.client)
        await watch_all(env, views, nursery)
        emu.faults.fail_for(1.0, **fault)
        emu.close_watches()  # the informer's re-watch runs into the errors too
        # Abort starts with a PATCH, which the client never re-sends by itself (GET, PUT
        # and DELETE it re-sends after Retry-After): the error reaches the caller.
        with pytest.raises(RpcError) as info:
            await env.client.abort(pb.AbortRequest(action_id=aid("zz")))
        assert info.value.code == Code.UNAVAILABLE
        late = WatcherView(env.client, ROOT)  # connects while the API server fails
        nursery.start_soon(late.run)
        await first_half(w)
        await second_half(w)
        views.append(late)
        await check_outcome(env, views)
        if fault["status"] == 500:
            assert late.unavailable  # refused at first, then it got its snapshot
        # (a 429 with Retry-After is waited out inside the client for GET, PUT, DELETE)
        assert late.snapshots >= 1
        assert answered(emu, fault["status"]) >= 3
        assert store.relists == 0
        assert [v.resyncs for v in views[:3]] == [0, 0, 0]
        await wait_for(lambda: store.ready()[0])


# -- API server down ------------------------------------------------------------------------


async def test_api_server_down_at_start_up_then_back() -> None:
    async with open_emulator() as emu:
        emu.refuse_connections()
        async with service(emu, wait_for_sync=False) as (env, views, nursery):
            store = env.store
            # The service is up but not ready, and says why.
            ok, why = store.ready()
            assert not ok and "unreachable" in why, why
            with pytest.raises(RpcError) as info:
                await env.client.enqueue(task_req(ROOT))
            assert info.value.code == Code.UNAVAILABLE
            refused = WatcherView(env.client, ROOT)
            nursery.start_soon(refused.run)
            await wait_for(lambda: len(refused.unavailable) >= 2)
            assert refused.snapshots == 0

            # Back, but the informer's start-up check (namespace) keeps failing until
            # reset: requests are served, while the watch cache is not filled yet.
            emu.faults.fail_for(60, 500, path=r"^/api/v1/namespaces/flyte$")
            emu.accept_connections()
            await setup_run(Retrying(env.client))
            await wait_for(lambda: refused.snapshots >= 1)  # maybe before c3 existed
            await watch_all(env, views, nursery)
            views.append(refused)
            # Written before the first list of the watch: delivered by that list.
            await env.client.update(update_req(aid("c4"), P.ACTION_PHASE_INITIALIZING))
            w = Retrying(env.client)
            await first_half(w)  # the abort of c3 (and g3) too, before the first list
            assert not store.synced
            emu.faults.reset()
            await wait_for(lambda: store.ready() == (True, "ok"))
            # The first list delivered what changed before it (c4) and what vanished.
            await wait_for(
                lambda: all(
                    v.state["c4"].phase == P.ACTION_PHASE_INITIALIZING
                    and v.state["c3"].phase == P.ACTION_PHASE_ABORTED
                    for v in views[:2]
                )
            )
            await second_half(w)
            await check_outcome(env, views)


async def test_api_server_down_mid_run_then_back() -> None:
    async with service() as (env, views, nursery):
        emu, store, w = env.emulator, env.store, Retrying(env.client)
        await setup_run(env.client)
        await watch_all(env, views, nursery)
        await first_half(w)
        emu.refuse_connections()
        await wait_for(lambda: "unreachable" in store.ready()[1])  # (maybe "not synced" first)
        assert not store.ready()[0]
        with pytest.raises(RpcError) as info:
            await env.client.update(update_req(aid("c0"), P.ACTION_PHASE_SUCCEEDED))
        assert info.value.code == Code.UNAVAILABLE
        late = WatcherView(env.client, ROOT)
        nursery.start_soon(late.run)
        await wait_for(lambda: late.unavailable)
        writes = trio.Event()

        async def write_second_half() -> None:
            await second_half(w)  # retried until the API server is back
            writes.set()

        nursery.start_soon(write_second_half)
        await trio.sleep(0.3)
        emu.accept_connections()
        with trio.fail_after(10):
            await writes.wait()
        views.append(late)
        await check_outcome(env, views)
        assert w.unavailable
        assert [v.resyncs for v in views[:3]] == [0, 0, 0]
        await wait_for(lambda: store.ready() == (True, "ok"))


# -- abort with a slow garbage collector ------------------------------------------------------


async def test_abort_cascade_waits_for_the_garbage_collector() -> None:
    """Abort deletes one object; its descendants go when the GC gets to them (level by
    level). A child enqueued under a descendant the GC has not reached yet is accepted,
    then collected too. Every watcher learns the fate of every descendant."""
    async with service() as (env, views, nursery):
        emu, store, client = env.emulator, env.store, env.client
        await client.enqueue(task_req(ROOT))
        await client.enqueue(task_req(aid("b1"), parent="a0"))
        await client.enqueue(task_req(aid("c1"), parent="b1"))  # running
        await client.enqueue(task_req(aid("c2"), parent="b1"))  # succeeded
        await client.enqueue(task_req(aid("d1"), parent="c1"))
        await client.update(update_req(aid("c1"), P.ACTION_PHASE_RUNNING))
        await client.update(update_req(aid("c2"), P.ACTION_PHASE_SUCCEEDED))
        for parent in (ROOT, aid("b1"), aid("c1")):
            await watch(env, views, nursery, parent)

        emu.faults.gc_paused = True
        await client.abort(pb.AbortRequest(action_id=aid("b1"), reason="stop"))
        # b1 is gone at once; its parent's watchers hear of it without the GC.
        await wait_for(lambda: views[0].state["b1"].phase == P.ACTION_PHASE_ABORTED)
        with pytest.raises(RpcError) as info:
            await client.enqueue(task_req(aid("c3"), parent="b1"))
        assert info.value.code == Code.NOT_FOUND
        # c1 still exists (dangling owner, not collected yet): a child of it is accepted.
        await client.enqueue(task_req(aid("d2"), parent="c1"))
        await trio.sleep(0.2)
        assert views[1].state["c1"].phase == P.ACTION_PHASE_RUNNING  # nothing yet
        emu.faults.gc_paused = False
        with trio.fail_after(10):  # the cascade, level by level
            for parent in ("b1", "c1"):
                while await store_children_names(store, aid(parent)):  # noqa: ASYNC110
                    await trio.sleep(0.02)

        await assert_final_views(store, views)
        assert {n: u.phase for n, u in views[1].state.items()} == {
            "c1": P.ACTION_PHASE_ABORTED,
            "c2": P.ACTION_PHASE_SUCCEEDED,  # terminal: never reported ABORTED
        }
        assert {n: u.phase for n, u in views[2].state.items()} == {
            "d1": P.ACTION_PHASE_ABORTED,
            "d2": P.ACTION_PHASE_ABORTED,
        }
        assert all(not v.regressions and v.resyncs == 0 for v in views)


async def store_children_names(store: Any, parent: Any) -> set[str]:
    return set(await store_children(store, parent))
