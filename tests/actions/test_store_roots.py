"""Store.list_roots on every backend: roots only, newest first, paged by cursor, filtered
by labels, following creates and deletes (the Kubernetes backend from its informer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_store_contract import BACKENDS, action, eventually, open_backend

from actions.store.base import KubeObject, RootCursor, Store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(request.param, tmp_path) as backend:
        yield backend


def root(name: str, run: str, project: str = "p") -> KubeObject:
    obj = action(name, labels={"flyte.org/is-root": "true", "flyte.org/project": project})
    obj["metadata"]["labels"]["flyte.org/run"] = run
    return obj


def key(obj: KubeObject) -> RootCursor:
    return obj["metadata"]["creationTimestamp"], obj["metadata"]["name"]


async def all_pages(
    store: Store, limit: int, labels: dict[str, str] | None = None
) -> list[KubeObject]:
    out: list[KubeObject] = []
    cursor: RootCursor | None = None
    for _ in range(100):
        page, cursor = await store.list_roots(labels or {}, limit=limit, before=cursor)
        assert len(page) <= limit
        out += page
        if cursor is None:
            return out
    raise AssertionError("no end")


async def roots_seen(store: Store, count: int) -> bool:
    return len(await all_pages(store, 100)) == count


async def test_roots_newest_first_in_pages(store: Store) -> None:
    created = [await store.create(root(f"run{i}.a0", f"run{i}")) for i in range(7)]
    owner = created[0]
    child = action("run0.c1", labels={"flyte.org/is-root": "false"})
    child["metadata"]["ownerReferences"] = [
        {"apiVersion": "flyte.org/v1", "kind": "TaskAction", "name": "run0.a0",
         "uid": owner["metadata"]["uid"]}
    ]  # fmt: skip
    await store.create(child)
    await store.create(action("no-label"))  # neither root nor child: not listed
    await eventually(lambda: roots_seen(store, 7))

    expected = sorted(created, key=key, reverse=True)
    for limit in (1, 3, 7, 50):
        listed = await all_pages(store, limit)
        assert [o["metadata"]["name"] for o in listed] == [o["metadata"]["name"] for o in expected]
    page, cursor = await store.list_roots({}, limit=7)
    assert len(page) == 7
    assert cursor is None  # nothing older is left: no empty last page


async def test_roots_filtered_by_labels_and_following_deletes(store: Store) -> None:
    for i in range(5):
        await store.create(root(f"r{i}.a0", f"r{i}", project="p" if i % 2 else "q"))
    await eventually(lambda: roots_seen(store, 5))
    listed = await all_pages(store, 2, {"flyte.org/project": "p"})
    assert sorted(o["metadata"]["name"] for o in listed) == ["r1.a0", "r3.a0"]
    assert await all_pages(store, 2, {"flyte.org/project": "none"}) == []

    await store.delete("r1.a0")
    await eventually(lambda: roots_seen(store, 4))
    listed = await all_pages(store, 2, {"flyte.org/project": "p"})
    assert [o["metadata"]["name"] for o in listed] == ["r3.a0"]


async def test_roots_status_writes_do_not_duplicate(store: Store) -> None:
    obj = await store.create(root("r.a0", "r"))
    await store.update_status({**obj, "status": {"attempts": 2}})
    await eventually(lambda: roots_seen(store, 1))
    page, cursor = await store.list_roots({}, limit=10)
    assert [o["metadata"]["name"] for o in page] == ["r.a0"]
    assert cursor is None
