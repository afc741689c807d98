"""Property tests of the emulator's store: one RV counter, event history and snapshots agree.

Random write sequences go straight to ``ObjectStore`` (no HTTP, no GC) so hypothesis can run many;
the HTTP layer over the same store is covered by the other test_emulator_* files.
"""

from __future__ import annotations

import yaml
from conftest import CRD_PATH, make_taskaction
from hypothesis import given, settings
from hypothesis import strategies as st
from kube_emulator.deleteoptions import DeleteOptions
from kube_emulator.errors import StatusError
from kube_emulator.resources import CRDS, NAMESPACES, Registry
from kube_emulator.selectors import FieldSelector, LabelSelector, parse_label_selector
from kube_emulator.store import ObjectStore
from kube_emulator.watch import WatchRequest, WatchSession

NS = "flyte"
NAMES = ["a", "b", "c"]

_op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("spec"), st.sampled_from(NAMES), st.sampled_from(["x", "y"])),
    st.tuples(st.just("label"), st.sampled_from(NAMES), st.sampled_from(["on", "off"])),
    st.tuples(st.just("status"), st.sampled_from(NAMES), st.integers(0, 2)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just(None)),
    st.tuples(st.just("release"), st.sampled_from(NAMES), st.just(None)),
)


_CRD = next(yaml.safe_load_all(CRD_PATH.read_text()))  # the TaskAction CRD, first


def _new_store():
    registry = Registry()
    store = ObjectStore(registry, too_large_rv_wait=0.01)
    store.create(CRDS, None, _CRD)
    store.create(NAMESPACES, None, {"metadata": {"name": NS}})
    return store, registry.get("flyte.org", "taskactions")


def _apply(store, rtype, op) -> None:
    kind, name, arg = op
    current = store.lookup(rtype, NS, name)
    try:
        if kind == "create":
            store.create(rtype, NS, make_taskaction(name, finalizers=["t/keep"] if arg else None))
        elif current is None:
            return
        elif kind == "spec":
            store.patch(rtype, NS, name, "application/merge-patch+json", {"spec": {"group": arg}})
        elif kind == "label":
            labels = {"sel": arg}
            store.patch(
                rtype, NS, name, "application/merge-patch+json", {"metadata": {"labels": labels}}
            )
        elif kind == "status":
            store.patch(
                rtype,
                NS,
                name,
                "application/merge-patch+json",
                {"status": {"attempts": arg}},
                subresource="status",
            )
        elif kind == "delete":
            store.delete(rtype, NS, name, DeleteOptions())
        elif kind == "release":
            store.patch(
                rtype, NS, name, "application/merge-patch+json", {"metadata": {"finalizers": None}}
            )
    except StatusError as err:
        assert err.reason in ("AlreadyExists",), err


def _everything(store, rtype, **kwargs):
    return store.list(rtype, NS, labels=LabelSelector(), fields=FieldSelector(), **kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(_op, max_size=25), st.data())
def test_history_snapshots_and_rvs_agree(ops, data):
    store, rtype = _new_store()
    start = store.rv
    snapshots = {start: _everything(store, rtype)["items"]}
    for op in ops:
        _apply(store, rtype, op)
        snapshots[store.rv] = _everything(store, rtype)["items"]
    events = [e for e in store.events_after(start) if e.rkey == rtype.key]
    rvs = [e.rv for e in events]
    # One event per persisted write, strictly increasing, ending at the store's RV.
    assert rvs == sorted(set(rvs))
    assert not events or rvs[-1] == store.rv
    for event in events:
        assert int(event.obj["metadata"]["resourceVersion"]) == event.rv
    # Replaying the events from the start reproduces every snapshot.
    state: dict[str, dict] = {}
    replayed = {start: []}
    for event in events:
        name = event.obj["metadata"]["name"]
        if event.type == "DELETED":
            state.pop(name)
        else:
            state[name] = event.obj
        replayed[event.rv] = [state[k] for k in sorted(state)]
    for rv, items in snapshots.items():
        assert replayed[rv] == items
    # An Exact list at any held RV shows the state right after that write.
    rv = data.draw(st.sampled_from(sorted(snapshots)))
    exact = _everything(store, rtype, resource_version=str(rv), rv_match="Exact")
    assert exact["items"] == snapshots[rv]


@settings(max_examples=40, deadline=None)
@given(st.lists(_op, max_size=20), st.sampled_from(["sel=on", "sel!=on", "sel"]))
def test_filtered_watch_replay_matches_filtered_list(ops, selector_text):
    store, rtype = _new_store()
    start = store.rv
    for op in ops:
        _apply(store, rtype, op)
    selector = parse_label_selector(selector_text)
    store.close()  # the session drains the history, then ends instead of waiting
    request = WatchRequest(rtype, "v1", NS, selector, FieldSelector(), str(start))
    session = WatchSession(store, request, _NoFaults())
    events: list[dict] = []
    try:
        session.run(events.append)
    except Exception as exc:  # AbortStream when the store is closed
        assert type(exc).__name__ == "AbortStream"
    seen: dict[str, dict] = {}
    for event in events:
        name = event["object"]["metadata"]["name"]
        if event["type"] == "DELETED":
            assert name in seen  # DELETED only for objects the watcher had
            seen.pop(name)
        else:
            assert (event["type"] == "ADDED") == (name not in seen)
            seen[name] = event["object"]
    expected = store.list(rtype, NS, labels=selector, fields=FieldSelector())["items"]
    assert [seen[k] for k in sorted(seen)] == expected


class _NoFaults:
    watch_close_after = None
    watch_close_abrupt = False
    close_generation = 0
    close_abrupt = False
    bookmark_generation = 0
