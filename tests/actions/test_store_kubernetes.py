"""What only the Kubernetes backend does: the informer's resume/re-list, readiness,
configuration, start-up checks and shutdown, against the emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from kube_emulator import Emulator
from kubernetes.client.exceptions import ApiException
from test_store_contract import ROOT, _no_nagle, action, assert_quiet, eventually, take, watching

from actions.store import _kube_client
from actions.store.base import WatchEvent
from actions.store.errors import AlreadyExists, Conflict, Gone, StoreUnavailable, TooLarge
from actions.store.kubernetes import ClientSettings, KubernetesStore

FAST = ClientSettings(watch_timeout=30, qps=1000, burst=1000, connect_timeout=1, request_timeout=5)


@asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[Emulator]:
    _no_nagle()
    emu = Emulator(crds=[ROOT / "k8s" / "crd.yaml"], namespaces=["flyte"], **options)
    emu.start()
    try:
        yield emu
    finally:
        await trio.to_thread.run_sync(emu.stop)


@asynccontextmanager
async def kube_store(emu: Emulator, **options: Any) -> AsyncIterator[KubernetesStore]:
    options.setdefault("settings", FAST)
    store = await KubernetesStore.open(api_client=emu.api_client(), **options)
    try:
        yield store
    finally:
        await store.aclose()


async def test_dropped_watch_resumes_from_last_rv_without_relist() -> None:
    async with emulator() as emu, kube_store(emu) as store, watching(store) as events:
        await store.create(action("a"))
        assert (await take(events, 1))[0].name == "a"
        emu.close_watches(abrupt=True)  # a network fault mid-stream
        await store.create(action("b"))
        emu.close_watches()  # and a clean server-side end
        await store.create(action("c"))
        got = await take(events, 2)
        assert [(e.type, e.name) for e in got] == [("ADDED", "b"), ("ADDED", "c")]
        await assert_quiet(events, 0.3)  # nothing replayed twice
        assert store.relists == 0
        assert store.ready() == (True, "ok")


async def test_gone_relists_and_emits_the_differences() -> None:
    async with emulator() as emu, kube_store(emu) as store, watching(store) as events:
        changed = await store.create(action("changed"))
        await store.create(action("vanished"))
        await store.create(action("same"))
        await take(events, 3)

        # Cut the watch off (GETs fail, writes go through), change things, compact.
        emu.faults.fail_for(60, 500, path="taskactions", verbs=["GET"])
        emu.close_watches()
        await store.update_status({**changed, "status": {"pluginPhase": "HIT"}})
        await store.delete("vanished")
        await store.create(action("new"))
        emu.compact()

        async def unreachable() -> bool:
            return not store.api_reachable

        await eventually(unreachable)
        emu.faults.reset()

        got = await take(events, 3)
        assert sorted((e.type, e.name) for e in got) == [
            ("ADDED", "new"),
            ("DELETED", "vanished"),
            ("MODIFIED", "changed"),
        ]
        assert next(e for e in got if e.name == "changed").object["status"] == {
            "pluginPhase": "HIT"
        }
        assert store.relists == 1
        assert await store.latest("vanished") is None
        assert (await store.latest("new")) is not None
        await eventually(lambda: _ready(store))


async def _ready(store: KubernetesStore) -> bool:
    return store.ready()[0]


async def test_readiness_follows_the_api_server() -> None:
    async with emulator() as emu, kube_store(emu) as store:
        assert store.synced and store.api_reachable
        emu.refuse_connections()

        async def down() -> bool:
            return not store.api_reachable

        await eventually(down)
        assert store.last_error
        with pytest.raises(StoreUnavailable):
            await store.get("anything")
        emu.accept_connections()
        await eventually(lambda: _ready(store), within=10)


async def test_slow_consumer_gets_everything_in_order() -> None:
    async with emulator() as emu, kube_store(emu) as store:
        send, receive = trio.open_memory_channel[WatchEvent](0)  # full backpressure
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: store.run_events(send, task_status=task_status))
            for i in range(30):
                await store.create(action(f"a{i:02}"))
            got = [await receive.receive() for _ in range(30)]
            nursery.cancel_scope.cancel()
        assert [e.name for e in got] == [f"a{i:02}" for i in range(30)]


async def test_since_replays_history_or_is_gone() -> None:
    async with emulator() as emu, kube_store(emu, history=3) as store:
        first = await store.create(action("a0"))
        for i in range(1, 6):
            last = await store.create(action(f"a{i}"))

        async def seen_last() -> bool:
            return await store.latest("a5") == last

        await eventually(seen_last)
        send, _ = trio.open_memory_channel[WatchEvent](10)
        with pytest.raises(Gone):
            await store.run_events(send, since=first["metadata"]["resourceVersion"])
        since = str(int(last["metadata"]["resourceVersion"]) - 2)
        async with watching(store, since=since) as events:
            got = await take(events, 2)
            await assert_quiet(events)
        assert [e.name for e in got] == ["a4", "a5"]


async def test_stops_cleanly_with_an_open_watch() -> None:
    async with emulator() as emu:
        store = await KubernetesStore.open(api_client=emu.api_client(), settings=FAST)
        with trio.fail_after(2):
            await store.aclose()
        assert not store._informer._thread.is_alive()
        await store.aclose()  # idempotent
        with pytest.raises(StoreUnavailable):
            await store.get("x")


async def test_kubeconfig_and_context(tmp_path: Path) -> None:
    async with emulator() as emu:
        path = emu.write_kubeconfig(tmp_path / "kubeconfig")
        settings = ClientSettings(kubeconfig=str(path), context="emulator", qps=1000, burst=1000)
        store = await KubernetesStore.open("flyte", settings=settings)
        try:
            created = await store.create(action("a"))
            assert await store.get("a") == created
        finally:
            await store.aclose()


async def test_missing_kubeconfig_is_unavailable(tmp_path: Path) -> None:
    settings = ClientSettings(kubeconfig=str(tmp_path / "nope"), in_cluster=False)
    with pytest.raises(StoreUnavailable, match="configuration"):
        await KubernetesStore.open(settings=settings)


async def test_namespace_created_or_refused() -> None:
    async with emulator() as emu:
        with pytest.raises(StoreUnavailable, match="does not exist"):
            await KubernetesStore.open(
                "missing", api_client=emu.api_client(), settings=FAST, create_namespace=False
            )
        async with kube_store(emu, namespace="made-here") as store:
            created = await store.create(action("a"))
            assert created["metadata"]["namespace"] == "made-here"


async def test_unreachable_api_server_fails_open() -> None:
    async with emulator() as emu:
        client = emu.api_client()
        emu.refuse_connections()
        with trio.fail_after(10), pytest.raises(StoreUnavailable):
            await KubernetesStore.open(api_client=client, settings=FAST)


async def test_conflict_and_already_exists_are_told_apart() -> None:
    async with emulator() as emu, kube_store(emu) as store:
        created = await store.create(action("a"))
        with pytest.raises(AlreadyExists):
            await store.create(action("a"))
        await store.update_status({**created, "status": {"attempts": 1}})
        with pytest.raises(Conflict):
            await store.update_status({**created, "status": {"attempts": 2}})


def test_error_bodies_of_both_client_generations() -> None:
    for body in (b'{"reason":"AlreadyExists","message":"x"}', '{"reason":"AlreadyExists"}'):
        assert isinstance(_kube_client.translate(ApiException(status=409, reason="C")), Conflict)
        exc = ApiException(status=409, reason="Conflict")
        exc.body = body
        assert isinstance(_kube_client.translate(exc), AlreadyExists)
    plain = ApiException(status=429, reason="Too Many Requests")
    plain.body = "Too many requests, please try again later."
    assert isinstance(_kube_client.translate(plain), StoreUnavailable)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (413, None, TooLarge),  # no body at all (a proxy in front of the API server)
        (413, '{"reason":"RequestEntityTooLarge","message":"Request entity too large"}', TooLarge),
        (500, b'{"message":"etcdserver: request is too large","code":500}', TooLarge),
        (
            500,
            '{"message":"rpc error: code = ResourceExhausted desc = trying to send message '
            'larger than max (2621571 vs. 2097152)","code":500}',
            TooLarge,
        ),
        (500, '{"reason":"InternalError","message":"Internal error occurred"}', StoreUnavailable),
        (504, '{"reason":"Timeout","message":"Too large resource version: 9, current: 3"}', None),
    ],
)
def test_too_large_is_told_by_code_or_message(status: int, body: Any, expected: Any) -> None:
    exc = ApiException(status=status, reason="x")
    exc.body = body
    error = _kube_client.translate(exc)
    if expected is None:
        assert not isinstance(error, TooLarge)
    else:
        assert type(error) is expected


def test_token_bucket_allows_burst_then_qps() -> None:
    bucket = _kube_client.TokenBucket(qps=10, burst=3)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert 0.05 < waits[3] <= 0.1 + 1e-3
    assert 0.15 < waits[4] <= 0.2 + 1e-3


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = _kube_client.Backoff(initial=0.1, maximum=1.0)
    delays = [backoff.next_delay() for _ in range(6)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.5 <= delays[-1] <= 1.0
    backoff.reset()
    assert backoff.next_delay() <= 0.1
