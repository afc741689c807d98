"""The watch fan-out, driven by a small in-test event source (no store)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
from actions_harness import wait_until
from flyteidl2.common import phase_pb2 as P

from actions import phases
from actions.fanout import ROOTS, FanOut, RunKey
from actions.objects import WatchKey
from actions.store.base import WatchEvent
from connect_proto._errors import Code, RpcError

KEY = WatchKey("o", "p", "d", "r1", "a0")


def obj(
    name: str,
    rv: int,
    phase: int = P.ACTION_PHASE_RUNNING,
    *,
    parent: str = "a0",
    run: str = "r1",
    org: str = "o",
    project: str = "p",
    domain: str = "d",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{run}-{name}",
            "namespace": "flyte",
            "resourceVersion": str(rv),
            "annotations": {"flyte.org/org": org},  # the executor's spec has no org
        },
        "spec": {
            "project": project,
            "domain": domain,
            "runName": run,
            "actionName": name,
            "parentActionName": parent,
            "actionType": "task",
            "runOutputBase": "s3://b/x",
        },
        "status": {"conditions": phases.conditions_for(phase, "t")},
    }


class Source:
    """The event-source half of a Store: emit() plays the store's change stream."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self._send: trio.MemorySendChannel[WatchEvent] | None = None
        self.latest_calls = 0  # the fan-out must never read back from the store
        self.fail = trio.Event()
        self.runs = 0

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.runs += 1
        self._send = send
        self.fail = trio.Event()
        task_status.started()
        await self.fail.wait()
        raise RuntimeError("source broke")

    async def latest(self, name: str) -> dict[str, Any] | None:
        self.latest_calls += 1
        return self.objects.get(name)

    async def put(self, name: str, phase: int = P.ACTION_PHASE_RUNNING, **kw: Any) -> int:
        self.rv += 1
        o = obj(name, self.rv, phase, **kw)
        kind = "MODIFIED" if o["metadata"]["name"] in self.objects else "ADDED"
        self.objects[o["metadata"]["name"]] = o
        assert self._send is not None
        await self._send.send(WatchEvent(kind, o))  # type: ignore[arg-type]
        return self.rv

    async def delete(self, name: str, run: str = "r1") -> None:
        self.rv += 1
        o = self.objects.pop(f"{run}-{name}")
        o = {**o, "metadata": {**o["metadata"], "resourceVersion": str(self.rv)}}
        assert self._send is not None
        await self._send.send(WatchEvent("DELETED", o))


def hold_workers(fanout: FanOut) -> trio.Event:
    """Make every worker wait before handling its next event until the returned event is
    set (as a slow worker would)."""
    gate = trio.Event()
    handle = fanout._handle

    async def held(event: WatchEvent, *args: Any) -> None:
        await gate.wait()
        await handle(event, *args)

    fanout._handle = held  # type: ignore[method-assign]
    return gate


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[Source, FanOut]]:
    source = Source()
    fanout = FanOut(source, **{"workers": 4, "buffer_size": 8, "restart_delay": 0.01, **kw})
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        yield source, fanout
        nursery.cancel_scope.cancel()


async def drain(sub: Any, until: Any, seconds: float = 5) -> list[Any]:
    out: list[Any] = []
    with trio.fail_after(seconds):
        while not until(out):
            out.extend(m.action_update for m in await sub.next_batch())
    return out


async def test_updates_for_one_action_arrive_in_store_order() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            sequence = [
                P.ACTION_PHASE_QUEUED,
                P.ACTION_PHASE_INITIALIZING,
                P.ACTION_PHASE_RUNNING,
                P.ACTION_PHASE_SUCCEEDED,
            ]
            for round_ in range(20):
                for i in range(10):
                    await source.put(f"c{i}", sequence[min(round_ // 5, 3)])
            got = await drain(
                sub,
                lambda out: (
                    sum(1 for u in out if u.phase == P.ACTION_PHASE_SUCCEEDED) >= 10
                    and {u.action_id.name for u in out if u.phase == P.ACTION_PHASE_SUCCEEDED}
                    == {f"c{i}" for i in range(10)}
                ),
            )
    for i in range(10):
        mine = [sequence.index(u.phase) for u in got if u.action_id.name == f"c{i}"]
        assert mine == sorted(mine)
        assert mine[-1] == 3


async def test_events_waiting_in_a_worker_are_merged_into_latest_state() -> None:
    async with running(workers=1) as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            gate = hold_workers(fanout)
            await source.put("x", P.ACTION_PHASE_QUEUED)  # the worker takes it and waits
            await trio.testing.wait_all_tasks_blocked()
            for phase in (P.ACTION_PHASE_INITIALIZING, P.ACTION_PHASE_RUNNING):
                await source.put("x", phase)  # both wait in the worker: merged
            await source.put("x", P.ACTION_PHASE_SUCCEEDED)
            await trio.testing.wait_all_tasks_blocked()
            assert fanout.metrics.events_merged == 2
            gate.set()
            got = await drain(sub, lambda out: out and out[-1].phase == P.ACTION_PHASE_SUCCEEDED)
    # The merged entry carries the newest event; intermediate states never appear after
    # a later one.
    assert [u.phase for u in got][-1] == P.ACTION_PHASE_SUCCEEDED
    assert P.ACTION_PHASE_INITIALIZING not in [u.phase for u in got]


async def test_full_worker_channel_applies_backpressure_and_loses_nothing() -> None:
    async with running(workers=1, buffer_size=2) as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            gate = hold_workers(fanout)
            done = trio.Event()

            async def writer() -> None:
                for i in range(20):
                    await source.put(f"c{i}")
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()  # blocked: worker busy, its channel full
                blocked_at = source.rv
                assert blocked_at < 20
                gate.set()
            got = await drain(sub, lambda out: len({u.action_id.name for u in out}) == 20)
    assert {u.action_id.name for u in got} == {f"c{i}" for i in range(20)}


async def test_slow_subscriber_is_resynced_while_others_keep_pace() -> None:
    async with running(subscriber_buffer=5) as (source, fanout):
        with fanout.subscribe(KEY) as fast, fanout.subscribe(KEY) as slow:
            received: list[Any] = []

            async def reader() -> None:
                while len({u.action_id.name for u in received}) < 30:
                    received.extend(m.action_update for m in await fast.next_batch())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for i in range(30):
                    await source.put(f"c{i}")
                    await trio.lowlevel.checkpoint()
            with pytest.raises(RpcError) as info:
                await slow.next_batch()
            assert info.value.code == Code.UNAVAILABLE
            assert "resync" in info.value.message
            assert fanout.metrics.subscriber_resyncs == 1
            assert slow.buffered() == 0  # memory released at once
            assert fanout.subscriber_count() == 1
        assert fanout.registry_size() == 0


async def test_updates_for_same_action_in_subscriber_buffer_are_merged() -> None:
    async with running(subscriber_buffer=2) as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            for phase in (P.ACTION_PHASE_QUEUED, P.ACTION_PHASE_RUNNING, P.ACTION_PHASE_SUCCEEDED):
                await source.put("x", phase)
            await trio.testing.wait_all_tasks_blocked()
            assert not sub.failed  # one action pending, however many updates
            got = await drain(sub, lambda out: out and out[-1].phase == P.ACTION_PHASE_SUCCEEDED)
    assert got[-1].phase == P.ACTION_PHASE_SUCCEEDED


async def test_deleted_reports_aborted_unless_terminal() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            await source.put("live", P.ACTION_PHASE_RUNNING)
            await source.put("done", P.ACTION_PHASE_SUCCEEDED)
            await source.put("bad", P.ACTION_PHASE_FAILED)
            for n in ("live", "done", "bad"):
                await source.delete(n)
            expected = {
                "live": P.ACTION_PHASE_ABORTED,
                "done": P.ACTION_PHASE_SUCCEEDED,
                "bad": P.ACTION_PHASE_FAILED,
            }
            got = await drain(sub, lambda out: {u.action_id.name: u.phase for u in out} == expected)
    assert all(
        u.phase != P.ACTION_PHASE_ABORTED for u in got if u.action_id.name in ("done", "bad")
    )


@pytest.mark.parametrize(
    "other",
    [
        {"run": "r2"},
        {"project": "p2"},
        {"domain": "d2"},
        {"org": "o2"},
        {"parent": "b0"},
    ],
)
async def test_scope_isolation(other: dict[str, str]) -> None:
    async with running() as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            await source.put("c1", P.ACTION_PHASE_RUNNING, **other)
            await source.put("c1", P.ACTION_PHASE_QUEUED)
            got = await drain(sub, lambda out: len(out) >= 1)
            await trio.testing.wait_all_tasks_blocked()
            assert sub.buffered() == 0
    assert [(u.action_id.run.name, u.phase) for u in got] == [("r1", P.ACTION_PHASE_QUEUED)]


async def test_updates_already_in_snapshot_are_dropped_by_resource_version() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            rv1 = await source.put("c1", P.ACTION_PHASE_QUEUED)
            await trio.testing.wait_all_tasks_blocked()
            sub.min_rv = rv1  # the snapshot already showed this state
            await source.put("c2", P.ACTION_PHASE_QUEUED)
            got = await drain(sub, lambda out: len(out) >= 1)
    assert [u.action_id.name for u in got] == ["c2"]


async def test_events_without_subscribers_are_skipped_cheaply() -> None:
    async with running() as (source, fanout):
        for i in range(10):
            await source.put(f"c{i}")
        await source.put("root", parent="")
        await trio.testing.wait_all_tasks_blocked()
        assert source.latest_calls == 0
        assert fanout.metrics.events_skipped == 11


class _Boom(Exception):
    pass


@pytest.mark.parametrize(
    "exit_path", ["return", "error", "cancel", "deadline", "resync", "shutdown"]
)
async def test_subscription_removed_on_every_exit_path(exit_path: str) -> None:
    async with running(subscriber_buffer=1) as (source, fanout):
        try:
            with trio.move_on_after(0.05 if exit_path == "deadline" else 10) as scope:
                with fanout.subscribe(KEY) as sub:
                    assert fanout.subscriber_count() == 1
                    if exit_path == "error":
                        raise _Boom
                    if exit_path == "cancel":
                        scope.cancel()
                        await trio.sleep(1)
                    if exit_path == "deadline":
                        await sub.next_batch()
                    if exit_path == "resync":
                        await source.put("c1")
                        await source.put("c2")
                        await sub.next_batch()
                        await sub.next_batch()
                    if exit_path == "shutdown":
                        fanout.shutdown()
                        await sub.next_batch()
        except _Boom:
            assert exit_path == "error"
        except RpcError as exc:
            assert exit_path in ("resync", "shutdown")
            assert exc.code == Code.UNAVAILABLE
        assert fanout.registry_size() == 0
        assert fanout.subscriber_count() == 0


async def test_source_failure_resyncs_every_stream_and_restarts() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            source.fail.set()
            with pytest.raises(RpcError) as info:
                with trio.fail_after(5):
                    await sub.next_batch()
            assert info.value.code == Code.UNAVAILABLE
        await wait_until(lambda: fanout.running and source.runs == 2)
        assert fanout.metrics.source_restarts == 1
        with fanout.subscribe(KEY) as sub:
            await source.put("c1")
            got = await drain(sub, lambda out: len(out) >= 1)
        assert got[0].action_id.name == "c1"


async def test_subscribe_before_running_or_after_shutdown_is_unavailable() -> None:
    fanout = FanOut(Source())
    with pytest.raises(RpcError) as info:
        with fanout.subscribe(KEY):
            pass
    assert info.value.code == Code.UNAVAILABLE
    async with running() as (_, fanout):
        fanout.shutdown()
        with pytest.raises(RpcError):
            with fanout.subscribe(KEY):
                pass


async def test_idle_subscription_memory_is_small() -> None:
    async with running() as (_, fanout):
        keys = [WatchKey("o", "p", "d", f"run{i}", "a0") for i in range(10_000)]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            with ExitStack() as stack:
                for key in keys:
                    stack.enter_context(fanout.subscribe(key))
                after = tracemalloc.get_traced_memory()[0]
                assert fanout.subscriber_count() == 10_000
        finally:
            tracemalloc.stop()
        per_stream = (after - before) / 10_000
        assert per_stream < 2048, per_stream
        assert fanout.registry_size() == 0


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        FanOut(Source(), workers=0)
    with pytest.raises(ValueError):
        FanOut(Source(), buffer_size=0)


async def test_malformed_object_does_not_stop_the_fanout() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            assert source._send is not None
            broken = {
                "metadata": {"name": "bad", "resourceVersion": "1"},
                "spec": {"parentActionName": "a0"},
            }
            await source._send.send(WatchEvent("ADDED", broken))
            await source._send.send(WatchEvent("ADDED", {"metadata": {"name": "x"}}))
            source.rv = 1
            await source.put("c1")
            got = await drain(sub, lambda out: len(out) >= 1)
        assert got[0].action_id.name == "c1"
        assert fanout.metrics.source_restarts == 0


async def test_a_change_watchers_cannot_see_is_not_sent_again() -> None:
    """An event whose update equals the one last offered (an annotation written before a
    delete, an executor's plugin state) is not sent twice; a real change still is."""
    async with running(workers=1) as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            await source.put("x", P.ACTION_PHASE_RUNNING)
            await source.put("x", P.ACTION_PHASE_RUNNING)  # same update: not sent
            await source.put("x", P.ACTION_PHASE_SUCCEEDED)
            got = await drain(sub, lambda out: out and out[-1].phase == P.ACTION_PHASE_SUCCEEDED)
            await trio.testing.wait_all_tasks_blocked()
            assert fanout.metrics.updates_unchanged == 1
    assert [u.phase for u in got] == [P.ACTION_PHASE_RUNNING, P.ACTION_PHASE_SUCCEEDED]


async def test_an_update_is_sent_again_after_changes_nobody_watched() -> None:
    """What the fan-out remembers as last offered is forgotten when a change goes by with
    nobody subscribed: a later subscriber sees the state return to an earlier one."""
    async with running(workers=1) as (source, fanout):
        with fanout.subscribe(KEY) as sub:
            await source.put("x", P.ACTION_PHASE_RUNNING)
            await drain(sub, lambda out: len(out) == 1)
        await source.put("x", P.ACTION_PHASE_INITIALIZING)  # nobody subscribed
        await trio.testing.wait_all_tasks_blocked()
        with fanout.subscribe(KEY) as sub:
            await source.put("x", P.ACTION_PHASE_RUNNING)  # as first offered, but news now
            got = await drain(sub, lambda out: len(out) == 1)
    assert [u.phase for u in got] == [P.ACTION_PHASE_RUNNING]


# ---------------------------------------------------------------- run and roots keys


async def events_of(sub: Any, until: Any, seconds: float = 5) -> list[tuple[str, str]]:
    """(event type, action name) of what an event subscription is handed."""
    out: list[tuple[str, str]] = []
    with trio.fail_after(seconds):
        while not until(out):
            out.extend((e.type, e.object["spec"]["actionName"]) for e in await sub.next_batch())
    return out


async def test_a_run_key_gets_every_action_of_its_run_at_any_depth() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe_events(RunKey("o", "p", "d", "r1")) as sub:
            await source.put("a0", parent="")  # the root
            await source.put("b1")
            await source.put("c1", parent="b1")
            await source.put("d1", parent="c1")
            await source.put("x1", run="r2")  # another run
            await source.put("y1", project="q")  # same run name, another project
            await source.delete("c1")
            got = await events_of(sub, lambda out: ("DELETED", "c1") in out)
        assert [name for _, name in got] == ["a0", "b1", "c1", "d1", "c1"]
        assert got[-1] == ("DELETED", "c1")
        assert source.latest_calls == 0  # handed the event's object: nothing read back
        assert fanout.event_subscriber_count() == 0 and fanout.registry_size() == 0


async def test_the_roots_key_gets_only_roots_and_parent_keys_are_unchanged() -> None:
    async with running() as (source, fanout):
        with (
            fanout.subscribe_events(ROOTS) as roots,
            fanout.subscribe(KEY) as children,
        ):
            assert (fanout.subscriber_count(), fanout.event_subscriber_count()) == (1, 1)
            await source.put("a0", parent="", run="r7")
            await source.put("c1")
            await source.put("a0", parent="", run="r8")
            got = await events_of(roots, lambda out: len(out) >= 2)
            assert got == [("ADDED", "a0"), ("ADDED", "a0")]
            updates = await drain(children, lambda out: len(out) >= 1)
            assert [u.action_id.name for u in updates] == ["c1"]


async def test_an_event_subscription_falls_behind_and_is_resynced() -> None:
    async with running(subscriber_buffer=2) as (source, fanout):
        with fanout.subscribe_events(RunKey("o", "p", "d", "r1")) as sub:
            for name in ("c1", "c2", "c3"):
                await source.put(name)
            await wait_until(lambda: fanout.metrics.subscriber_resyncs == 1)
            with pytest.raises(RpcError) as info:
                await sub.next_batch()
            assert info.value.code == Code.UNAVAILABLE
            assert "resync" in info.value.message
        assert fanout.registry_size() == 0


async def test_event_subscriptions_end_on_shutdown_and_source_restart() -> None:
    async with running() as (source, fanout):
        with fanout.subscribe_events(ROOTS) as sub:
            source.fail.set()
            with pytest.raises(RpcError):
                with trio.fail_after(5):
                    await sub.next_batch()
        await wait_until(lambda: fanout.running)
        with fanout.subscribe_events(RunKey("o", "p", "d", "r1")) as sub:
            fanout.shutdown()
            with pytest.raises(RpcError) as info:
                await sub.next_batch()
            assert "shutting down" in info.value.message
        with pytest.raises(RpcError):
            with fanout.subscribe_events(ROOTS):
                pass
