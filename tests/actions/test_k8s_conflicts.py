"""Both backends under write contention, and the stores' readiness.

A conflict storm: many concurrent ``Update`` calls on one action. Each is a read, a
computed status and a write guarded by the resourceVersion; a Conflict is retried on a
fresh read, so every update lands (or is refused, as docs/contract.md says, for a superseded
attempt) and none overwrites another. Checked on the change stream: one write per
accepted update, carrying that update's fields.
"""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from actions_harness import (
    aid,
    assert_no_leaked_threads,
    fast_kube_settings,
    open_emulator,
    open_env,
    open_store,
    task_req,
    update_req,
)
from flyteidl2.common import phase_pb2 as P

from actions import naming
from actions.store.base import WatchEvent
from actions.store.errors import Conflict
from connect_proto._errors import Code, RpcError

STORM = 50
COMBOS = [("embedded", "direct"), ("embedded", "wire"), ("kubernetes", "direct"),
          ("kubernetes", "wire")]  # fmt: skip
IDS = [f"{b}-{m}" for b, m in COMBOS]


@pytest.fixture(autouse=True, scope="module")
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert_no_leaked_threads(before)


class CountConflicts:
    """Passes everything through to the store; counts the Conflicts of status writes."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.conflicts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def update_status(self, obj: Any) -> Any:
        try:
            return await self._inner.update_status(obj)
        except Conflict:
            self.conflicts += 1
            raise


@asynccontextmanager
async def storm_env(backend: str, mode: str) -> AsyncIterator[tuple[Any, CountConflicts]]:
    holder: list[CountConflicts] = []

    def wrap(store: Any) -> CountConflicts:
        holder.append(CountConflicts(store))
        return holder[0]

    async with open_env(mode, wrap_store=wrap, backend=backend) as env:
        await env.client.enqueue(task_req(aid("a0")))
        await env.client.enqueue(task_req(aid("c1"), parent="a0"))
        yield env, holder[0]


@asynccontextmanager
async def writes_of(store: Any, name: str) -> AsyncIterator[list[WatchEvent]]:
    """Collects the store's change events for ``name`` while the block runs."""
    events: list[WatchEvent] = []
    send, receive = trio.open_memory_channel[WatchEvent](10_000)

    async def collect() -> None:
        async for event in receive:
            if event.name == name:
                events.append(event)

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: store.run_events(send, task_status=task_status))
        nursery.start_soon(collect)
        yield events
        nursery.cancel_scope.cancel()


async def wait_for_count(events: list[Any], count: int, within: float = 10) -> None:
    with trio.fail_after(within):
        while len(events) < count:  # noqa: ASYNC110 - filled by another task
            await trio.sleep(0.01)


async def storm(calls: list[Any]) -> list[Code | None]:
    """Runs every call at once; the error code of each (None: success)."""
    results: list[Code | None] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            await calls[i]()
        except RpcError as exc:
            results[i] = exc.code

    order = list(range(len(calls)))
    random.Random(7).shuffle(order)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in order:
                nursery.start_soon(one, i)
    return results


@pytest.mark.parametrize(("backend", "mode"), COMBOS, ids=IDS)
async def test_conflict_storm_every_update_lands(backend: str, mode: str) -> None:
    async with storm_env(backend, mode) as (env, counter):
        child = aid("c1")
        name = naming.object_name(child)
        async with writes_of(env.store, name) as events:
            # Each update carries a cache status of its own (numbers past the enum's
            # names are stored as they come, as the executor's integer field keeps them).
            values = list(range(1, STORM + 1))
            results = await storm(
                [
                    lambda v=v: env.client.update(
                        update_req(child, P.ACTION_PHASE_RUNNING, cache_status=v)
                    )
                    for v in values
                ]
            )
            assert results == [None] * STORM
            await wait_for_count(events, STORM)
            with trio.move_on_after(0.2):
                await wait_for_count(events, STORM + 1)  # there must be no more
        # One write per update, each carrying its own cache status: none was lost or
        # overwritten by a racing one.
        assert len(events) == STORM
        assert all(e.type == "MODIFIED" for e in events)
        assert {e.object["status"]["cacheStatus"] for e in events} == set(values)
        history = events[-1].object["status"]["phaseHistory"]
        assert [h["phase"] for h in history] == ["Queued", "Executing"]
        assert counter.conflicts > 0  # it really was a storm


@pytest.mark.parametrize(("backend", "mode"), COMBOS, ids=IDS)
async def test_conflict_storm_of_attempts_keeps_the_newest(backend: str, mode: str) -> None:
    async with storm_env(backend, mode) as (env, counter):
        child = aid("c1")
        name = naming.object_name(child)
        async with writes_of(env.store, name) as events:
            attempts = list(range(1, STORM + 1))
            results = await storm(
                [
                    lambda a=a: env.client.update(
                        update_req(child, P.ACTION_PHASE_RUNNING, attempt=a, attempts=a)
                    )
                    for a in attempts
                ]
            )
            # Each lands, or is refused because a newer attempt was already stored.
            assert set(results) <= {None, Code.FAILED_PRECONDITION}, results
            landed = [a for a, r in zip(attempts, results, strict=True) if r is None]
            assert STORM in landed
            await wait_for_count(events, len(landed))
        written = [e.object["status"]["attempts"] for e in events]
        assert sorted(written) == landed  # one write per accepted update
        assert written == sorted(written)  # never an older attempt over a newer one
        obj = await env.store.get(name)
        assert obj["status"]["attempts"] == STORM
        assert counter.conflicts > 0 or len(landed) < STORM


# -- readiness ------------------------------------------------------------------------------


async def test_embedded_store_is_ready_while_open() -> None:
    store = await open_store("embedded")
    assert store.ready() == (True, "ok")
    await store.aclose()
    assert store.ready() == (False, "store closed")


async def test_kubernetes_store_readiness_follows_the_api_server() -> None:
    async def until(check: Any) -> None:
        with trio.fail_after(10):
            while not check():  # noqa: ASYNC110 - the watch thread's state, no event
                await trio.sleep(0.01)

    async with open_emulator() as emu:
        emu.refuse_connections()
        store = await open_store(
            "kubernetes", emu, wait_for_sync=False, settings=fast_kube_settings()
        )
        try:
            ok, why = store.ready()
            assert not ok and "unreachable" in why
            # Reachable again, but listing fails for a while: still not ready, and why.
            emu.faults.fail_for(1.0, 500, path=r"/taskactions$", verbs=["GET"])
            emu.accept_connections()
            await until(lambda: "500" in store.ready()[1])
            assert not store.synced
            await until(lambda: store.ready() == (True, "ok"))
            emu.refuse_connections()
            await until(lambda: not store.ready()[0])
            assert "unreachable" in store.ready()[1]
            emu.accept_connections()
            await until(lambda: store.ready() == (True, "ok"))
        finally:
            await store.aclose()
        assert store.ready() == (False, "store closed")
