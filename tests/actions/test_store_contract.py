"""The Store contract, run against every backend through the ``store`` fixture.

Backends: the embedded store in memory and on a SQLite file; the Kubernetes backend on the
emulator joins through ``BACKENDS`` once it exists. Assertions stick to what a real API
server guarantees, so they hold for all of them (the embedded store's exact cascade order
is tested in test_store_embedded.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from actions.store._meta import MAX_OBJECT_BYTES
from actions.store.base import KubeObject, Store, WatchEvent
from actions.store.embedded import EmbeddedStore
from actions.store.errors import AlreadyExists, Conflict, Invalid, NotFound, TooLarge

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["memory", "sqlite", "kubernetes"]


@asynccontextmanager
async def open_backend(kind: str, tmp_path: Path, **options: Any) -> AsyncIterator[Store]:
    """A fresh, empty store of the given backend, closed (and its emulator stopped) after."""
    if kind == "kubernetes":
        from kube_emulator import Emulator

        from actions.store.kubernetes import ClientSettings, KubernetesStore

        _no_nagle()
        emulator = Emulator(crds=[ROOT / "k8s" / "crd.yaml"], namespaces=[])
        emulator.start()
        try:
            store: Store = await KubernetesStore.open(
                api_client=emulator.api_client(),
                settings=ClientSettings(watch_timeout=30, qps=1000, burst=1000),
                **options,
            )
            try:
                yield store
            finally:
                await store.aclose()
        finally:
            await trio.to_thread.run_sync(emulator.stop)
        return
    if kind == "memory":
        store = await EmbeddedStore.open(None, **options)
    elif kind == "sqlite":
        store = await EmbeddedStore.open(tmp_path / "data", synchronous="NORMAL", **options)
    else:
        raise ValueError(kind)
    try:
        yield store
    finally:
        await store.aclose()


def _no_nagle() -> None:
    """Each emulator response goes out in several small writes; with Nagle on, every
    request on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    (Reported to the emulator's owner; harmless once fixed there.)"""
    from kube_emulator.handler import ApiHandler

    ApiHandler.disable_nagle_algorithm = True


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(request.param, tmp_path) as backend:
        yield backend


def action(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    owners: list[KubeObject] = (),  # type: ignore[assignment]
    spec: dict[str, Any] | None = None,
) -> KubeObject:
    metadata: dict[str, Any] = {"name": name, "labels": {"flyte.org/run": "r1", **(labels or {})}}
    if owners:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "flyte.org/v1",
                "kind": "TaskAction",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "blockOwnerDeletion": True,
            }
            for owner in owners
        ]
    return {
        "apiVersion": "flyte.org/v1",
        "kind": "TaskAction",
        "metadata": metadata,
        "spec": spec or spec_for(name),
    }


def spec_for(name: str, **extra: Any) -> dict[str, Any]:
    """A spec the TaskAction CRD schema accepts (the emulator validates and prunes)."""
    return {
        "project": "p",
        "domain": "d",
        "runName": "r1",
        "actionName": name,
        "actionType": "task",
        **extra,
    }


@asynccontextmanager
async def watching(store: Store, since: str | None = None) -> AsyncIterator[Any]:
    send, receive = trio.open_memory_channel[WatchEvent](10_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(store.run_events, send, since=since))
        yield receive
        nursery.cancel_scope.cancel()


async def take(receive: Any, count: int, within: float = 5) -> list[WatchEvent]:
    events = []
    with trio.fail_after(within):
        for _ in range(count):
            events.append(await receive.receive())
    return events


async def assert_quiet(receive: Any, wait: float = 0.1) -> None:
    with trio.move_on_after(wait):
        event = await receive.receive()
        raise AssertionError(f"unexpected event {event}")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5) -> None:
    """Poll: a cluster's garbage collector acts some time after the delete returns."""
    with trio.fail_after(within):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


def rv(obj: KubeObject) -> int:
    return int(obj["metadata"]["resourceVersion"])


# -- create ---------------------------------------------------------------------------


async def test_create_fills_server_metadata(store: Store) -> None:
    body = action("p.d.r1.a0")
    body["metadata"].update(uid="mine", generation=7, creationTimestamp="1999-01-01T00:00:00Z")
    body["status"] = {"pluginPhase": "ignored"}
    created = await store.create(body)
    meta = created["metadata"]
    assert meta["name"] == "p.d.r1.a0"
    assert meta["namespace"] == store.namespace
    assert meta["uid"] != "mine" and len(meta["uid"]) == 36
    assert meta["generation"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["creationTimestamp"] != "1999-01-01T00:00:00Z"
    assert re.fullmatch(r"[1-9]\d*", meta["resourceVersion"])
    assert "status" not in created  # status only through the status subresource
    assert created["spec"] == spec_for("p.d.r1.a0")
    assert body["metadata"]["uid"] == "mine"  # the caller's dict is left alone
    assert await store.get("p.d.r1.a0") == created


async def test_create_twice_is_already_exists_and_changes_nothing(store: Store) -> None:
    first = await store.create(action("a0"))
    with pytest.raises(AlreadyExists, match='"a0" already exists'):
        await store.create(action("a0", spec=spec_for("a0", group="other")))
    assert await store.get("a0") == first


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o["metadata"].update(name="Not_A_DNS_Name"),
        lambda o: o["metadata"].update(name=""),
        lambda o: o["metadata"].update(resourceVersion="5"),
        lambda o: o["metadata"].update(namespace="elsewhere"),
        lambda o: o["metadata"]["labels"].update({"bad key!": "v"}),
        lambda o: o["metadata"]["labels"].update({"k": "bad value!"}),
        lambda o: o.update(kind="Pod"),
        lambda o: o.pop("apiVersion"),
        lambda o: o["metadata"].update(ownerReferences=[{"name": "x"}]),
    ],
)
async def test_create_rejects_what_the_api_server_rejects(store: Store, mutate: Any) -> None:
    body = action("a0")
    mutate(body)
    with pytest.raises(Invalid):
        await store.create(body)


async def test_create_with_missing_owner_is_not_found(store: Store) -> None:
    ghost = {"metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
    with pytest.raises(NotFound):
        await store.create(action("child", owners=[ghost]))
    with pytest.raises(NotFound):
        await store.get("child")


async def test_create_with_stale_owner_uid_is_not_found(store: Store) -> None:
    parent = await store.create(action("parent"))
    await store.delete("parent")
    await store.create(action("parent"))  # same name, new uid
    with pytest.raises(NotFound):
        await store.create(action("child", owners=[parent]))


# -- get / latest / list --------------------------------------------------------------


async def test_get_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match='"nope" not found'):
        await store.get("nope")


async def test_returned_objects_are_copies(store: Store) -> None:
    created = await store.create(action("a0"))
    created["spec"]["actionName"] = "changed"
    fetched = await store.get("a0")
    assert fetched["spec"]["actionName"] == "a0"
    fetched["metadata"]["labels"]["x"] = "y"
    assert "x" not in (await store.get("a0"))["metadata"]["labels"]


async def test_latest_follows_writes_and_deletion(store: Store) -> None:
    # An informer cache lags the API server a little, so this polls.
    assert await store.latest("a0") is None
    created = await store.create(action("a0"))
    await eventually(lambda: is_latest("a0", created, store))
    updated = await store.update_status({**created, "status": {"pluginPhase": "RUNNING"}})
    await eventually(lambda: is_latest("a0", updated, store))
    await store.delete("a0")
    await eventually(lambda: is_latest("a0", None, store))


async def is_latest(name: str, expected: KubeObject | None, store: Store) -> bool:
    return await store.latest(name) == expected


async def test_list_selects_by_all_labels(store: Store) -> None:
    await store.create(action("b", labels={"flyte.org/parent": "p1", "kind": "task"}))
    await store.create(action("a", labels={"flyte.org/parent": "p1", "kind": "trace"}))
    await store.create(action("c", labels={"flyte.org/parent": "p2", "kind": "task"}))
    other_run = action("d", labels={"flyte.org/parent": "p1"})
    other_run["metadata"]["labels"]["flyte.org/run"] = "r2"
    await store.create(other_run)

    items, _ = await store.list({"flyte.org/parent": "p1"})
    assert [o["metadata"]["name"] for o in items] == ["a", "b", "d"]
    items, _ = await store.list({"flyte.org/parent": "p1", "flyte.org/run": "r1"})
    assert [o["metadata"]["name"] for o in items] == ["a", "b"]
    items, _ = await store.list({"flyte.org/parent": "p1", "kind": "task"})
    assert [o["metadata"]["name"] for o in items] == ["b"]
    items, _ = await store.list({"flyte.org/parent": "nobody"})
    assert items == []
    items, _ = await store.list({})
    assert [o["metadata"]["name"] for o in items] == ["a", "b", "c", "d"]


async def test_list_resource_version_covers_every_write(store: Store) -> None:
    a = await store.create(action("a", labels={"x": "1"}))
    b = await store.create(action("b", labels={"x": "2"}))
    items, list_rv = await store.list({"x": "1"})
    assert items == [a]
    assert int(list_rv) >= rv(b) > rv(a)  # writes to other objects count too


async def test_list_rv_then_run_events_since_misses_nothing(store: Store) -> None:
    await store.create(action("a"))
    _, list_rv = await store.list({})
    created = await store.create(action("b"))
    async with watching(store, since=list_rv) as events:
        (event,) = await take(events, 1)
        assert (event.type, event.object) == ("ADDED", created)
        await assert_quiet(events)


async def test_list_rejects_invalid_selector(store: Store) -> None:
    with pytest.raises(Invalid):
        await store.list({"k": "not a value!"})


# -- update_status --------------------------------------------------------------------


async def test_update_status_replaces_status_only(store: Store) -> None:
    created = await store.create(action("a0"))
    body = {**created, "status": {"pluginPhase": "QUEUED"}}
    body["spec"] = spec_for("a0", group="tampered")
    body["metadata"] = {**created["metadata"], "labels": {"tampered": "yes"}}
    updated = await store.update_status(body)
    assert updated["status"] == {"pluginPhase": "QUEUED"}
    assert updated["spec"] == created["spec"]
    assert updated["metadata"]["labels"] == created["metadata"]["labels"]
    assert updated["metadata"]["generation"] == 1
    assert rv(updated) > rv(created)
    assert await store.get("a0") == updated


async def test_update_status_without_status_removes_it(store: Store) -> None:
    created = await store.create(action("a0"))
    updated = await store.update_status({**created, "status": {"pluginPhase": "QUEUED"}})
    cleared = await store.update_status({k: v for k, v in updated.items() if k != "status"})
    assert "status" not in cleared


async def test_update_status_stale_rv_is_conflict(store: Store) -> None:
    created = await store.create(action("a0"))
    await store.update_status({**created, "status": {"pluginPhase": "QUEUED"}})
    with pytest.raises(Conflict, match="the object has been modified"):
        await store.update_status({**created, "status": {"pluginPhase": "RUNNING"}})
    assert (await store.get("a0"))["status"] == {"pluginPhase": "QUEUED"}


async def test_update_status_missing_object_is_not_found(store: Store) -> None:
    created = await store.create(action("a0"))
    await store.delete("a0")
    with pytest.raises(NotFound):
        await store.update_status({**created, "status": {"pluginPhase": "QUEUED"}})


async def test_update_status_needs_resource_version(store: Store) -> None:
    created = await store.create(action("a0"))
    body = {**created, "metadata": {**created["metadata"], "resourceVersion": ""}}
    with pytest.raises(Invalid):
        await store.update_status({**body, "status": {}})


async def test_noop_update_keeps_rv_and_emits_nothing(store: Store) -> None:
    created = await store.create(action("a0"))
    updated = await store.update_status({**created, "status": {"pluginPhase": "QUEUED"}})
    async with watching(store) as events:
        same = await store.update_status({**updated, "status": {"pluginPhase": "QUEUED"}})
        assert same == updated
        same = await store.patch_annotations("a0", {})
        assert same == updated
        await store.patch_annotations("a0", {"flyte.org/aborted-by": "me"})
        (event,) = await take(events, 1)
        assert event.type == "MODIFIED"
        assert event.object["metadata"]["annotations"] == {"flyte.org/aborted-by": "me"}


# -- patch_annotations ----------------------------------------------------------------


async def test_patch_annotations_merges(store: Store) -> None:
    created = await store.create(action("a0"))
    first = await store.patch_annotations("a0", {"a.io/x": "1", "a.io/y": "2"})
    second = await store.patch_annotations("a0", {"a.io/y": "3"})
    assert second["metadata"]["annotations"] == {"a.io/x": "1", "a.io/y": "3"}
    assert second["metadata"]["generation"] == 1
    assert rv(created) < rv(first) < rv(second)


async def test_patch_annotations_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.patch_annotations("nope", {"a": "b"})


# -- size limit -------------------------------------------------------------------------
# Over MAX_OBJECT_BYTES (etcd's 1.5 MiB) a cluster answers 500 from etcd, over 3 MiB of
# body 413 from the API server; the embedded store refuses the same objects itself.


def big(name: str, filler: int) -> KubeObject:
    return action(name, spec=spec_for(name, taskTemplate="x" * filler))


@pytest.mark.parametrize("filler", [MAX_OBJECT_BYTES, 4 * 1024 * 1024], ids=["etcd", "body"])
async def test_create_too_large_is_refused_and_writes_nothing(store: Store, filler: int) -> None:
    _, rv_before = await store.list({})
    with pytest.raises(TooLarge) as err:
        await store.create(big("a0", filler))
    assert err.value.size is not None and err.value.size > MAX_OBJECT_BYTES
    assert err.value.limit == MAX_OBJECT_BYTES
    with pytest.raises(NotFound):
        await store.get("a0")
    assert (await store.list({}))[1] == rv_before


async def test_object_just_under_the_limit_is_stored(store: Store) -> None:
    created = await store.create(big("a0", MAX_OBJECT_BYTES - 2000))
    assert await store.get("a0") == created


async def test_update_status_too_large_is_refused_and_changes_nothing(store: Store) -> None:
    created = await store.create(big("a0", MAX_OBJECT_BYTES // 2))
    body = {**created, "status": {"pluginPhase": "y" * (MAX_OBJECT_BYTES // 2 + 1000)}}
    with pytest.raises(TooLarge) as err:
        await store.update_status(body)
    assert err.value.size is not None and err.value.size > MAX_OBJECT_BYTES
    assert err.value.limit == MAX_OBJECT_BYTES
    assert await store.get("a0") == created


async def test_patch_annotations_too_large_is_refused_and_changes_nothing(store: Store) -> None:
    created = await store.create(big("a0", MAX_OBJECT_BYTES - 2000))
    with pytest.raises(TooLarge):
        await store.patch_annotations("a0", {"a.io/reason": "z" * 4000})
    assert await store.get("a0") == created


# -- delete and cascade ---------------------------------------------------------------


async def test_delete_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.delete("nope")


async def test_delete_emits_deleted_with_new_rv(store: Store) -> None:
    created = await store.create(action("a0"))
    async with watching(store) as events:
        await store.delete("a0")
        (event,) = await take(events, 1)
    assert event.type == "DELETED"
    assert event.name == "a0"
    assert int(event.resource_version) > rv(created)
    assert event.object["spec"] == created["spec"]
    with pytest.raises(NotFound):
        await store.get("a0")


async def make_tree(store: Store, depth: int, fanout: int) -> dict[str, str]:
    """A tree of actions; returns {name: parent name} (the root maps to "")."""
    parents: dict[str, str] = {}
    root = await store.create(action("root"))
    parents["root"] = ""
    level = [root]
    for d in range(1, depth + 1):
        next_level = []
        for owner in level:
            for i in range(fanout):
                name = f"{owner['metadata']['name']}-{d}{i}"
                labels = {"flyte.org/parent": owner["metadata"]["name"]}
                next_level.append(await store.create(action(name, labels=labels, owners=[owner])))
                parents[name] = owner["metadata"]["name"]
        level = next_level
    return parents


async def wait_gone(store: Store, names: list[str]) -> None:
    async def gone() -> bool:
        items, _ = await store.list({})
        return not {o["metadata"]["name"] for o in items} & set(names)

    await eventually(gone)


async def test_background_delete_cascades_at_every_depth(store: Store) -> None:
    parents = await make_tree(store, depth=3, fanout=2)
    bystander = await store.create(action("bystander"))
    async with watching(store) as events:
        await store.delete("root")
        deleted = await take(events, len(parents))
        await wait_gone(store, list(parents))
    assert [e.type for e in deleted] == ["DELETED"] * len(parents)
    assert sorted(e.name for e in deleted) == sorted(parents)
    versions = [int(e.resource_version) for e in deleted]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # Background: an owner goes first and the GC then collects what depended on it.
    position = {e.name: i for i, e in enumerate(deleted)}
    for name, parent in parents.items():
        if parent:
            assert position[parent] < position[name]
    assert await store.get("bystander") == bystander


async def test_foreground_delete_removes_the_tree(store: Store) -> None:
    parents = await make_tree(store, depth=3, fanout=1)
    got: list[WatchEvent] = []
    async with watching(store) as events:
        await store.delete("root", propagation="Foreground")
        with trio.fail_after(5):
            while not (got and got[-1].type == "DELETED" and got[-1].name == "root"):
                got.append(await events.receive())
        await wait_gone(store, list(parents))
    # Owners being deleted in foreground are marked first (MODIFIED); each object goes
    # once, the root last, after everything that depended on it.
    deleted = [e.name for e in got if e.type == "DELETED"]
    assert sorted(deleted) == sorted(parents)
    position = {name: i for i, name in enumerate(deleted)}
    for name, parent in parents.items():
        if parent:
            assert position[name] < position[parent]
    assert got[0].type == "MODIFIED" and got[0].name == "root"
    assert "deletionTimestamp" in got[0].object["metadata"]


async def test_orphan_delete_keeps_dependents(store: Store) -> None:
    root = await store.create(action("root"))
    child = await store.create(action("child", owners=[root]))
    await store.delete("root", propagation="Orphan")

    async def orphaned() -> bool:
        return "ownerReferences" not in (await store.get("child"))["metadata"]

    await eventually(orphaned)
    assert (await store.get("child"))["metadata"]["uid"] == child["metadata"]["uid"]
    with pytest.raises(NotFound):
        await store.get("root")


async def test_dependent_with_a_live_second_owner_survives(store: Store) -> None:
    a = await store.create(action("a"))
    b = await store.create(action("b"))
    await store.create(action("both", owners=[a, b]))
    await store.delete("a")

    async def stripped() -> bool:
        return len((await store.get("both"))["metadata"]["ownerReferences"]) == 1

    await eventually(stripped)
    refs = (await store.get("both"))["metadata"]["ownerReferences"]
    assert [r["name"] for r in refs] == ["b"]
    await store.delete("b")
    await wait_gone(store, ["both"])


# -- run_events -----------------------------------------------------------------------


async def test_run_events_reports_every_change_in_order(store: Store) -> None:
    async with watching(store) as events:
        created = await store.create(action("a0"))
        updated = await store.update_status({**created, "status": {"pluginPhase": "QUEUED"}})
        patched = await store.patch_annotations("a0", {"x.io/y": "z"})
        await store.delete("a0")
        got = await take(events, 4)
        await assert_quiet(events)
    assert [e.type for e in got] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert [e.object for e in got[:3]] == [created, updated, patched]
    assert [int(e.resource_version) for e in got] == sorted(int(e.resource_version) for e in got)


async def test_run_events_started_means_nothing_later_is_missed(store: Store) -> None:
    await store.create(action("before"))
    async with watching(store) as events:
        await store.create(action("after"))
        (event,) = await take(events, 1)
        assert event.name == "after"


async def test_run_events_since_resumes_exactly(store: Store) -> None:
    a = await store.create(action("a"))
    b = await store.create(action("b"))
    c = await store.update_status({**a, "status": {"pluginPhase": "RUNNING"}})
    async with watching(store, since=a["metadata"]["resourceVersion"]) as events:
        got = await take(events, 2)
        await assert_quiet(events)
    assert [e.object for e in got] == [b, c]


async def test_concurrent_status_updates_with_retry_all_land(store: Store) -> None:
    await store.create(action("counter"))
    writers = 20
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        while True:
            current = await store.get("counter")
            count = (current.get("status") or {}).get("attempts", 0)
            try:
                await store.update_status({**current, "status": {"attempts": count + 1}})
                return
            except Conflict:
                conflicts += 1
                await trio.lowlevel.checkpoint()

    async with watching(store) as events:
        async with trio.open_nursery() as nursery:
            for _ in range(writers):
                nursery.start_soon(increment)
        assert (await store.get("counter"))["status"] == {"attempts": writers}
        got = await take(events, writers)
    assert [e.object["status"]["attempts"] for e in got] == list(range(1, writers + 1))
    assert conflicts > 0  # the test really exercised optimistic concurrency
