"""What only the embedded (SQLite) store promises: persistence, its exact cascade order,
the change log shared by several processes, compaction, and index use."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from test_store_contract import (
    action,
    assert_quiet,
    eventually,
    make_tree,
    rv,
    take,
    watching,
)

from actions.store import _sqlite
from actions.store.base import WatchEvent
from actions.store.embedded import EmbeddedStore
from actions.store.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    OwnerTerminating,
    StoreUnavailable,
)


async def open_file_store(data_dir: Path, **options: Any) -> EmbeddedStore:
    return await EmbeddedStore.open(data_dir, synchronous="NORMAL", **options)


# -- persistence ----------------------------------------------------------------------


async def test_restart_keeps_objects_rv_and_change_log(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path)
    parent = await store.create(action("parent"))
    child = await store.create(action("child", owners=[parent]))
    child = await store.update_status({**child, "status": {"phase": "RUNNING"}})
    await store.create(action("gone"))
    await store.delete("gone")
    last_rv = await store.current_resource_version()
    await store.aclose()

    store = await open_file_store(tmp_path)
    try:
        assert await store.get("child") == child
        assert await store.get("parent") == parent
        assert await store.latest("gone") is None
        assert await store.current_resource_version() == last_rv
        again = await store.create(action("gone"))
        assert rv(again) == int(last_rv) + 1
        # The log survived too: a watcher can resume from before the restart.
        async with watching(store, since=parent["metadata"]["resourceVersion"]) as events:
            got = await take(events, 5)
        assert [(e.type, e.name) for e in got] == [
            ("ADDED", "child"),
            ("MODIFIED", "child"),
            ("ADDED", "gone"),
            ("DELETED", "gone"),
            ("ADDED", "gone"),
        ]
        # The cascade index survived: deleting the parent still takes the child.
        await store.delete("parent")
        assert await store.latest("child") is None
    finally:
        await store.aclose()


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path)
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.get("x")


async def test_close_ends_run_events() -> None:
    store = await EmbeddedStore.open(None)
    send, _ = trio.open_memory_channel[WatchEvent](1)
    with trio.fail_after(2), pytest.RaisesGroup(StoreUnavailable):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(store.run_events, send))
            await store.aclose()


async def test_namespaces_are_separate_files(tmp_path: Path) -> None:
    one = await open_file_store(tmp_path, namespace="one")
    two = await open_file_store(tmp_path, namespace="two")
    try:
        await one.create(action("a"))
        assert await two.latest("a") is None
        assert (await one.get("a"))["metadata"]["namespace"] == "one"
    finally:
        await one.aclose()
        await two.aclose()


async def test_bad_namespace_is_invalid() -> None:
    with pytest.raises(Invalid):
        await EmbeddedStore.open(None, namespace="Not_Valid")


# -- exact cascade order (the embedded store does the GC's work synchronously) ---------


async def test_cascade_is_done_when_delete_returns_parents_first() -> None:
    store = await EmbeddedStore.open(None)
    try:
        parents = await make_tree(store, depth=4, fanout=2)
        async with watching(store) as events:
            await store.delete("root")
            items, _ = await store.list({})
            assert items == []  # synchronous: nothing left to wait for
            got = await take(events, len(parents))
            await assert_quiet(events)
        # Breadth first: every object of depth d before any of depth d+1.
        depths = [e.name.count("-") for e in got]
        assert depths == sorted(depths)
        assert got[0].name == "root"
    finally:
        await store.aclose()


async def test_foreground_marks_then_deletes_bottom_up() -> None:
    store = await EmbeddedStore.open(None)
    try:
        root = await store.create(action("root"))
        await make_tree_under(store, root)
        async with watching(store) as events:
            await store.delete("root", propagation="Foreground")
            got = await take(events, 5)
        # Reverse breadth-first order: every child before its owner, the root last.
        assert [(e.type, e.name) for e in got] == [
            ("MODIFIED", "root"),
            ("DELETED", "root-c-g"),
            ("DELETED", "root-d"),
            ("DELETED", "root-c"),
            ("DELETED", "root"),
        ]
        marked = got[0].object["metadata"]
        assert marked["finalizers"] == ["foregroundDeletion"]
        assert marked["generation"] == 2
        assert "deletionTimestamp" in marked
    finally:
        await store.aclose()


async def make_tree_under(store: EmbeddedStore, root: dict[str, Any]) -> None:
    c = await store.create(action("root-c", owners=[root]))
    await store.create(action("root-d", owners=[root]))
    await store.create(action("root-c-g", owners=[c]))


async def test_orphan_marks_strips_then_deletes() -> None:
    store = await EmbeddedStore.open(None)
    try:
        root = await store.create(action("root"))
        await store.create(action("kid", owners=[root]))
        async with watching(store) as events:
            await store.delete("root", propagation="Orphan")
            got = await take(events, 3)
        assert [(e.type, e.name) for e in got] == [
            ("MODIFIED", "root"),
            ("MODIFIED", "kid"),
            ("DELETED", "root"),
        ]
        assert got[0].object["metadata"]["finalizers"] == ["orphan"]
        assert "ownerReferences" not in got[1].object["metadata"]
    finally:
        await store.aclose()


async def test_invalid_propagation_policy() -> None:
    store = await EmbeddedStore.open(None)
    try:
        await store.create(action("a"))
        with pytest.raises(Invalid):
            await store.delete("a", propagation="Sideways")  # type: ignore[arg-type]
    finally:
        await store.aclose()


async def test_create_under_terminating_owner(tmp_path: Path) -> None:
    # The store's own deletes are atomic, so a terminating owner is only visible when the
    # state says so (e.g. a future asynchronous GC); set it directly.
    store = await open_file_store(tmp_path)
    owner = await store.create(action("owner"))
    owner["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert store.path is not None
    await store.aclose()
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE objects SET body = ? WHERE name = 'owner'", (json.dumps(owner),))
    store = await open_file_store(tmp_path)  # the index is loaded from the objects
    try:
        with pytest.raises(OwnerTerminating):
            await store.create(action("child", owners=[owner]))
    finally:
        await store.aclose()


# -- indexes --------------------------------------------------------------------------


async def test_lists_and_cascades_come_from_the_index(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path)
    try:
        root = await store.create(action("root", labels={"flyte.org/run": "r"}))
        [
            await store.create(action(f"kid{i}", owners=[root], labels={"flyte.org/run": "r"}))
            for i in range(3)
        ]
        await store.create(action("other", labels={"flyte.org/run": "s"}))
        assert store.path is not None
        # What the index answers no longer depends on the tables: empty them under it.
        with sqlite3.connect(store.path) as conn:
            conn.execute("DELETE FROM objects")
        items, list_rv = await store.list({"flyte.org/run": "r"})
        assert [o["metadata"]["name"] for o in items] == ["kid0", "kid1", "kid2", "root"]
        assert list_rv == await store.current_resource_version() == "5"
        assert await store.list({"flyte.org/run": "r", "missing": "x"}) == ([], list_rv)
        async with watching(store) as events:
            await store.delete("root")
            got = await take(events, 4)
        assert [e.name for e in got] == ["root", "kid0", "kid1", "kid2"]
    finally:
        await store.aclose()


async def test_schema_1_files_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "flyte.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
            "INSERT INTO meta VALUES ('schema', 1), ('rv', 0), ('compacted', 0);"
            "CREATE TABLE labels (key TEXT, value TEXT, name TEXT);"
            "CREATE TABLE owners (owner TEXT, owner_uid TEXT, dependent TEXT);"
        )
    store = await open_file_store(tmp_path)
    try:
        await store.create(action("a"))
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert _sqlite.meta_value(conn, "schema") == _sqlite.SCHEMA_VERSION
    assert "labels" not in tables and "owners" not in tables


async def test_schema_2_files_are_migrated_with_their_objects(tmp_path: Path) -> None:
    # Version 2 kept objects in a WITHOUT ROWID table; version 3 in a rowid table with a
    # unique name. The objects, the log and the resourceVersion carry over.
    path = tmp_path / "flyte.sqlite3"
    store = await open_file_store(tmp_path)
    try:
        for name in ("a", "b"):
            await store.create(action(name))
        before = {name: await store.get(name) for name in ("a", "b")}
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:  # back to version 2's table, same rows
        conn.executescript(
            "CREATE TABLE objects_v2 (name TEXT PRIMARY KEY, uid TEXT NOT NULL,"
            " rv INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO objects_v2 SELECT name, uid, rv, body FROM objects;"
            "DROP TABLE objects; ALTER TABLE objects_v2 RENAME TO objects;"
            "UPDATE meta SET value = 2 WHERE key = 'schema';"
        )
    store = await open_file_store(tmp_path)
    try:
        assert {name: await store.get(name) for name in ("a", "b")} == before
        obj = await store.get("a")
        obj["status"] = {"phase": "changed"}
        await store.update_status(obj)
        await store.create(action("c"))
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert _sqlite.meta_value(conn, "schema") == _sqlite.SCHEMA_VERSION == 3
        (table,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'objects'").fetchone()
        assert "WITHOUT ROWID" not in table
        rows = dict(conn.execute("SELECT name, body FROM objects").fetchall())
    assert sorted(rows) == ["a", "b", "c"]
    assert '"changed"' in rows["a"]


# -- compaction -----------------------------------------------------------------------


async def test_resume_from_compacted_rv_is_gone() -> None:
    store = await EmbeddedStore.open(None, change_retention=5)
    try:
        first = await store.create(action("a0"))
        for i in range(1, 30):
            await store.create(action(f"a{i}"))
        send, _ = trio.open_memory_channel[WatchEvent](100)
        with pytest.raises(Gone, match="too old"):
            await store.run_events(send, since=first["metadata"]["resourceVersion"])
        current = int(await store.current_resource_version())
        async with watching(store, since=str(current - 5)) as events:
            got = await take(events, 5)
            await assert_quiet(events)
        assert [int(e.resource_version) for e in got] == list(range(current - 4, current + 1))
    finally:
        await store.aclose()


async def test_follower_that_falls_behind_the_log_gets_gone() -> None:
    store = await EmbeddedStore.open(None, change_retention=4)
    try:
        send, receive = trio.open_memory_channel[WatchEvent](0)
        outcome: list[BaseException] = []

        async def follow(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await store.run_events(send, task_status=task_status)
            except Gone as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            await nursery.start(follow)
            await store.create(action("a0"))

            async def follower_blocked() -> bool:  # it holds a0 and waits for us to take it
                return receive.statistics().tasks_waiting_send > 0

            await eventually(follower_blocked)
            for i in range(1, 20):
                await store.create(action(f"a{i}"))
            assert (await receive.receive()).name == "a0"
        assert len(outcome) == 1
    finally:
        await store.aclose()


async def test_since_must_be_a_resource_version() -> None:
    store = await EmbeddedStore.open(None)
    try:
        send, _ = trio.open_memory_channel[WatchEvent](1)
        with pytest.raises(Invalid):
            await store.run_events(send, since="abc")
    finally:
        await store.aclose()


# -- several processes on one data directory -------------------------------------------


async def test_two_stores_on_one_dir_follow_each_other(tmp_path: Path) -> None:
    # A huge poll interval on `local` proves local writes wake the follower at once.
    local = await open_file_store(tmp_path, poll_interval=60)
    other = await open_file_store(tmp_path, poll_interval=0.02)
    try:
        async with watching(local) as local_events, watching(other) as other_events:
            start = time.monotonic()
            a = await local.create(action("a"))
            (event,) = await take(local_events, 1, within=1)
            assert event.object == a
            assert time.monotonic() - start < 0.5
            (event,) = await take(other_events, 1, within=2)
            assert event.object == a

            # Interleaved writers through both stores: one order, seen the same by both.
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(local.create, action(f"l{i}"))
                    nursery.start_soon(other.create, action(f"o{i}"))
            from_other = await take(other_events, 20)
            # `local` only polls every 60 s, but its own writes wake it and it then reads
            # everything committed so far, including `other`'s writes before its own last.
            names = {e.name for e in from_other}
            assert names == {f"l{i}" for i in range(10)} | {f"o{i}" for i in range(10)}
            versions = [int(e.resource_version) for e in from_other]
            assert versions == list(range(versions[0], versions[0] + 20))
            b = await other.get("l3")
            assert await local.get("l3") == b
    finally:
        await local.aclose()
        await other.aclose()


async def test_a_write_on_a_stale_index_is_decided_on_the_file(tmp_path: Path) -> None:
    # `slow` never polls: only its own writes and misses make it look at the file, so
    # its index is behind `other`'s commits when it writes.
    slow = await open_file_store(tmp_path, poll_interval=3600)
    other = await open_file_store(tmp_path, poll_interval=3600)
    try:
        created = await slow.create(action("x"))
        seen = await other.get("x")  # a miss: looks at the file first
        assert seen == created
        moved = await other.update_status({**seen, "status": {"phase": "RUNNING"}})
        # `slow` still holds the old state; its write must lose, as the file says.
        with pytest.raises(Conflict):
            await slow.update_status({**created, "status": {"phase": "FAILED"}})
        assert await slow.get("x") == moved  # the conflict brought its index up to date
        done = await slow.update_status({**moved, "status": {"phase": "SUCCEEDED"}})
        assert rv(done) == rv(moved) + 1
        await slow.create(action("y"))  # and a create decided on the fresh index
        assert [o["metadata"]["name"] for o in (await slow.list({}))[0]] == ["x", "y"]
    finally:
        await slow.aclose()
        await other.aclose()


_WRITER = """
import sys, trio
from pathlib import Path
from actions.store.embedded import EmbeddedStore

async def main() -> None:
    store = await EmbeddedStore.open(Path(sys.argv[1]), synchronous="NORMAL")
    parent = await store.get("parent")
    for i in range(5):
        child = await store.create({
            "apiVersion": "flyte.org/v1", "kind": "TaskAction",
            "metadata": {"name": f"sub-{i}", "labels": {"flyte.org/parent": "parent"},
                         "ownerReferences": [{"apiVersion": "flyte.org/v1",
                             "kind": "TaskAction", "name": "parent",
                             "uid": parent["metadata"]["uid"]}]},
            "spec": {}})
        await store.update_status({**child, "status": {"phase": "SUCCEEDED"}})
    await store.aclose()

trio.run(main)
"""


async def test_writes_from_another_process_reach_run_events(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path, poll_interval=0.02)
    try:
        await store.create(action("parent"))
        async with watching(store) as events:
            async with trio.open_nursery() as nursery:  # both processes write at once
                nursery.start_soon(
                    partial(trio.run_process, [sys.executable, "-c", _WRITER, str(tmp_path)])
                )
                for i in range(20):
                    await store.create(action(f"local-{i}"))
                    await trio.sleep(0.01)
            got = await take(events, 30, within=5)
            await assert_quiet(events)
        versions = [int(e.resource_version) for e in got]
        assert versions == list(range(versions[0], versions[0] + 30))  # one order, no gaps
        assert [(e.type, e.name) for e in got if e.name.startswith("sub-")] == [
            (kind, f"sub-{i}") for i in range(5) for kind in ("ADDED", "MODIFIED")
        ]
        assert [e.name for e in got if e.name.startswith("local-")] == [
            f"local-{i}" for i in range(20)
        ]
        children, _ = await store.list({"flyte.org/parent": "parent"})
        assert len(children) == 5
        await store.delete("parent")  # the other process's children cascade here
        items, _ = await store.list({"flyte.org/parent": "parent"})
        assert items == []
    finally:
        await store.aclose()


async def test_run_events_since_in_the_future_is_gone() -> None:
    # A resourceVersion this store never reached (e.g. the data directory was wiped):
    # the caller's state cannot be trusted, so it must re-list.
    store = await EmbeddedStore.open(None)
    try:
        await store.create(action("a"))
        send, _ = trio.open_memory_channel[WatchEvent](1)
        with pytest.raises(Gone, match="too large"):
            await store.run_events(send, since="999999999")
    finally:
        await store.aclose()


# -- group commit ---------------------------------------------------------------------


async def test_group_commit_isolates_failing_writes(tmp_path: Path) -> None:
    store = await open_file_store(tmp_path)
    try:
        outcomes: dict[str, str] = {}

        async def create(key: str, body: Any) -> None:
            try:
                await store.create(body)
                outcomes[key] = "ok"
            except AlreadyExists:
                outcomes[key] = "exists"
            except Invalid:
                outcomes[key] = "invalid"

        async def crash() -> None:  # a caller's bug fails its own write only
            with pytest.raises(AttributeError):
                await store.update_status("not an object")  # type: ignore[arg-type]
            outcomes["crash"] = "raised"

        async with watching(store) as events:
            async with trio.open_nursery() as nursery:  # all queue up behind one another
                for i in range(10):
                    nursery.start_soon(create, f"a{i}", action(f"a{i}"))
                nursery.start_soon(create, "dup", action("a3"))
                nursery.start_soon(create, "junk", {"metadata": "not a mapping"})
                nursery.start_soon(crash)
            got = await take(events, 10)
            await assert_quiet(events)
        assert outcomes.pop("junk") == "invalid"
        assert outcomes.pop("crash") == "raised"
        assert sorted(outcomes.values()) == ["exists"] + ["ok"] * 10
        # Failed writes left no hole in the resourceVersions.
        versions = [int(e.resource_version) for e in got]
        assert versions == list(range(1, 11))
        assert await store.current_resource_version() == "10"
    finally:
        await store.aclose()


async def test_cancelled_queued_write_never_happens() -> None:
    store = await EmbeddedStore.open(None)
    try:

        async def cancelled_create() -> None:
            with trio.move_on_after(0.05):
                await store.create(action("never"))

        async with store._write_lock:  # as if a transaction were in flight
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancelled_create)
        assert store._pending == []
        await store.create(action("later"))
        assert await store.latest("never") is None
    finally:
        await store.aclose()
