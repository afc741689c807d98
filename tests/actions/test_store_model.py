"""Property test: the embedded store against a small model, over random operation programs.

After every program: the objects equal the model's, and replaying the whole change log
(``run_events(since="0")``) rebuilds exactly the listed state, with resourceVersions
strictly increasing by one per change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_contract import action

from actions.store.base import KubeObject, WatchEvent
from actions.store.embedded import EmbeddedStore
from actions.store.errors import AlreadyExists, Conflict, NotFound

NAMES = ["a", "b", "c", "d"]
names = st.sampled_from(NAMES)

operations = st.one_of(
    st.tuples(st.just("create"), names, st.none() | names),
    st.tuples(st.just("status"), names, st.integers(0, 2), st.booleans()),
    st.tuples(st.just("annotate"), names, st.sampled_from(["x.io/k", "x.io/l"]), st.text("ab")),
    st.tuples(st.just("delete"), names, st.sampled_from(["Background", "Foreground", "Orphan"])),
)


@dataclass
class Model:
    """name -> (owner name or None, status, annotations)."""

    owner: dict[str, str | None] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)

    def descendants(self, name: str) -> set[str]:
        found = {name}
        while True:
            more = {n for n, o in self.owner.items() if o in found} - found
            if not more:
                return found
            found |= more

    def remove(self, gone: set[str]) -> None:
        for name in gone:
            del self.owner[name]
            self.status.pop(name, None)
            del self.annotations[name]


async def apply(store: EmbeddedStore, model: Model, op: tuple[Any, ...]) -> None:
    kind, name = op[0], op[1]
    exists = name in model.owner
    if kind == "create":
        owner = op[2]
        try:
            owners = [await store.get(owner)] if owner else []
        except NotFound:
            owners = [{"metadata": {"name": owner, "uid": "0" * 32}}]
        try:
            await store.create(action(name, owners=owners))
        except AlreadyExists:
            assert exists
        except NotFound:
            assert not exists and owner not in model.owner
        else:
            assert not exists and (owner is None or owner in model.owner)
            model.owner[name] = owner
            model.annotations[name] = {}
    elif kind == "status":
        value, stale = {"n": op[2]}, op[3]
        if not exists:
            return
        current = await store.get(name)
        if stale:
            old_rv = str(int(current["metadata"]["resourceVersion"]) - 1)
            current["metadata"]["resourceVersion"] = old_rv
        try:
            updated = await store.update_status({**current, "status": value})
        except Conflict:
            assert stale
        else:
            assert not stale
            was = model.status.get(name)
            model.status[name] = value
            assert (updated == current) == (was == value)
    elif kind == "annotate":
        try:
            await store.patch_annotations(name, {op[2]: op[3]})
        except NotFound:
            assert not exists
        else:
            model.annotations[name][op[2]] = op[3]
    else:
        try:
            await store.delete(name, propagation=op[2])
        except NotFound:
            assert not exists
            return
        if op[2] == "Orphan":
            model.remove({name})
            for child, owner in model.owner.items():
                if owner == name:
                    model.owner[child] = None
        else:
            model.remove(model.descendants(name))


def summary(obj: KubeObject) -> tuple[str | None, Any, dict[str, str]]:
    refs = obj["metadata"].get("ownerReferences") or []
    owner = refs[0]["name"] if refs else None
    return owner, obj.get("status"), obj["metadata"].get("annotations") or {}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(operations, min_size=10, max_size=50))
async def test_store_matches_model(program: list[tuple[Any, ...]]) -> None:
    store = await EmbeddedStore.open(None)
    try:
        model = Model()
        for op in program:
            await apply(store, model, op)
        items, list_rv = await store.list({})
        assert {o["metadata"]["name"]: summary(o) for o in items} == {
            name: (model.owner[name], model.status.get(name), model.annotations[name])
            for name in model.owner
        }

        replayed: dict[str, KubeObject] = {}
        send, receive = trio.open_memory_channel[WatchEvent](10_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: store.run_events(send, since="0"))
            previous = 0
            while previous < int(list_rv):
                event = await receive.receive()
                assert int(event.resource_version) == previous + 1
                previous += 1
                if event.type == "DELETED":
                    del replayed[event.name]
                else:
                    assert (event.type == "ADDED") == (event.name not in replayed)
                    replayed[event.name] = event.object
            nursery.cancel_scope.cancel()
        assert sorted(replayed.values(), key=lambda o: o["metadata"]["name"]) == items
    finally:
        await store.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(st.lists(operations, min_size=1, max_size=8), min_size=1, max_size=8))
async def test_concurrent_writes_keep_the_log_consistent(rounds: list[list[Any]]) -> None:
    """Rounds of concurrent operations (group commit batches them): whatever wins, the
    change log replays to exactly the listed state, one resourceVersion per change."""
    store = await EmbeddedStore.open(None)
    try:

        async def attempt(op: tuple[Any, ...]) -> None:
            # No model: races decide the outcome; only the log invariant counts.
            kind, name = op[0], op[1]
            try:
                if kind == "create":
                    owners = [await store.get(op[2])] if op[2] else []
                    await store.create(action(name, owners=owners))
                elif kind == "status":
                    current = await store.get(name)
                    await store.update_status({**current, "status": {"n": op[2]}})
                elif kind == "annotate":
                    await store.patch_annotations(name, {op[2]: op[3]})
                else:
                    await store.delete(name, propagation=op[2])
            except (NotFound, AlreadyExists, Conflict):
                pass

        for ops in rounds:
            async with trio.open_nursery() as nursery:
                for op in ops:
                    nursery.start_soon(attempt, op)
        items, list_rv = await store.list({})
        replayed: dict[str, KubeObject] = {}
        send, receive = trio.open_memory_channel[WatchEvent](10_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: store.run_events(send, since="0"))
            for expected_rv in range(1, int(list_rv) + 1):
                event = await receive.receive()
                assert int(event.resource_version) == expected_rv
                if event.type == "DELETED":
                    del replayed[event.name]
                else:
                    replayed[event.name] = event.object
            nursery.cancel_scope.cancel()
        assert sorted(replayed.values(), key=lambda o: o["metadata"]["name"]) == items
    finally:
        await store.aclose()
