"""Emulator: delete responses, finalizers, garbage collection, namespaces."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes.client import ApiException, V1DeleteOptions

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"
KEEP = "flyte.org/keep"


def _status(exc: ApiException) -> dict:
    return json.loads(exc.body if isinstance(exc.body, str) else exc.body.decode())


def _create(api, body, ns=NS):
    return api.create_namespaced_custom_object(G, V, ns, P, body)


def _names(api, ns=NS) -> set[str]:
    return {i["metadata"]["name"] for i in api.list_namespaced_custom_object(G, V, ns, P)["items"]}


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _deleted_order(emu, since: int) -> list[str]:
    return [
        e.obj["metadata"]["name"]
        for e in emu.store.events_after(since)
        if e.type == "DELETED" and e.rkey == ("flyte.org", "taskactions")
    ]


# --- delete responses ------------------------------------------------------------------


def test_immediate_delete_returns_success_status(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a"))
    result = custom_api.delete_namespaced_custom_object(G, V, NS, P, "a")
    assert result == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": "a",
            "group": "flyte.org",
            "kind": "taskactions",
            "uid": obj["metadata"]["uid"],
        },
    }
    with pytest.raises(ApiException) as err:
        custom_api.delete_namespaced_custom_object(G, V, NS, P, "a")
    assert err.value.status == 404


def test_finalizer_pending_delete_and_release(custom_api, taskaction, kube_emulator):
    _create(custom_api, taskaction("a", finalizers=[KEEP]))
    result = custom_api.delete_namespaced_custom_object(G, V, NS, P, "a")
    md = result["metadata"]
    assert result["kind"] == "TaskAction" and md["deletionTimestamp"]
    assert md["deletionGracePeriodSeconds"] == 0 and md["generation"] == 2
    assert md["finalizers"] == [KEEP]
    assert "a" in _names(custom_api)  # readable and listable while finalizers remain
    rv = kube_emulator.store.rv
    again = custom_api.delete_namespaced_custom_object(G, V, NS, P, "a")
    assert again["metadata"]["resourceVersion"] == md["resourceVersion"]  # no new write
    assert kube_emulator.store.rv == rv
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object(
            G, V, NS, P, "a", {"metadata": {"finalizers": [KEEP, "flyte.org/more"]}}
        )
    assert err.value.status == 422
    assert "no new finalizers" in _status(err.value)["message"]
    # Updates are still allowed; emptying finalizers deletes instead of storing.
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "x"}})
    last = custom_api.patch_namespaced_custom_object(
        G, V, NS, P, "a", {"metadata": {"finalizers": []}}
    )
    assert last["metadata"]["name"] == "a"
    assert "a" not in _names(custom_api)


def test_policy_swap_on_object_being_deleted(custom_api, taskaction):
    _create(custom_api, taskaction("a", finalizers=[KEEP]))
    first = custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "a", body=V1DeleteOptions(propagation_policy="Orphan")
    )
    assert first["metadata"]["finalizers"] == [KEEP, "orphan"]
    _wait(
        lambda: (
            "orphan"
            not in custom_api.get_namespaced_custom_object(G, V, NS, P, "a")["metadata"][
                "finalizers"
            ]
        )
    )  # the GC finishes orphaning (no dependents)
    second = custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "a", body=V1DeleteOptions(propagation_policy="Foreground")
    )
    assert "foregroundDeletion" in second["metadata"]["finalizers"]


def test_delete_options_errors_and_precedence(custom_api, taskaction, kube_raw):
    _create(custom_api, taskaction("a", finalizers=[KEEP]))
    path = f"/apis/{G}/{V}/namespaces/{NS}/{P}/a"
    status, _, data = kube_raw("DELETE", path, {"propagationPolicy": "Sideways"})
    assert status == 422 and json.loads(data)["details"]["kind"] == "DeleteOptions"
    status, _, _ = kube_raw(
        "DELETE", path, {"propagationPolicy": "Orphan", "orphanDependents": True}
    )
    assert status == 422
    status, _, data = kube_raw(
        "DELETE", path, {"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}
    )
    assert status == 409 and "the UID in the precondition" in json.loads(data)["message"]
    # A non-empty body (even {}) wins over the query.
    result = custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "a", propagation_policy="Orphan", body={}
    )
    assert result["metadata"]["finalizers"] == [KEEP]
    # kubectl's body: no kind, no Content-Type.
    status, _, _ = kube_raw("DELETE", path, b'{"propagationPolicy":"Background"}')
    assert status == 200


def test_orphan_dependents_false_answers_202(kube_raw, custom_api, taskaction):
    _create(custom_api, taskaction("a", finalizers=[KEEP]))
    status, _, data = kube_raw(
        "DELETE", f"/apis/{G}/{V}/namespaces/{NS}/{P}/a", {"orphanDependents": False}
    )
    assert status == 202 and json.loads(data)["kind"] == "TaskAction"


def test_delete_collection_honours_selectors(custom_api, taskaction):
    for name, team in (("a", "x"), ("b", "x"), ("c", "y")):
        _create(custom_api, taskaction(name, labels={"team": team}))
    result = custom_api.delete_collection_namespaced_custom_object(
        G, V, NS, P, label_selector="team=x"
    )
    assert result["kind"] == "TaskActionList"
    assert sorted(i["metadata"]["name"] for i in result["items"]) == ["a", "b"]
    assert _names(custom_api) == {"c"}


# --- garbage collection ------------------------------------------------------------------


def test_background_cascade_runs_level_by_level(custom_api, taskaction, kube_emulator):
    root = _create(custom_api, taskaction("root"))
    child = _create(custom_api, taskaction("child", owners=[root]))
    _create(custom_api, taskaction("grandchild", owners=[child]))
    _create(custom_api, taskaction("other"))
    since = kube_emulator.store.rv
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "root")
    _wait(lambda: _names(custom_api) == {"other"})
    assert _deleted_order(kube_emulator, since) == ["root", "child", "grandchild"]


def test_foreground_waits_for_blocking_dependents(custom_api, taskaction, kube_emulator):
    root = _create(custom_api, taskaction("root"))
    child = _create(custom_api, taskaction("child", owners=[root], finalizers=[KEEP]))
    _create(custom_api, taskaction("grandchild", owners=[child]))
    since = kube_emulator.store.rv
    out = custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "root", body=V1DeleteOptions(propagation_policy="Foreground")
    )
    assert out["metadata"]["finalizers"] == ["foregroundDeletion"]
    _wait(lambda: "grandchild" not in _names(custom_api))
    kube_emulator.wait_gc_idle()
    # child is held by its own finalizer, so root keeps waiting.
    assert _names(custom_api) == {"root", "child"}
    held = custom_api.get_namespaced_custom_object(G, V, NS, P, "child")
    assert held["metadata"]["deletionTimestamp"]
    custom_api.patch_namespaced_custom_object(
        G,
        V,
        NS,
        P,
        "child",
        [{"op": "remove", "path": "/metadata/finalizers/0"}],
        _content_type="application/json-patch+json",
    )
    _wait(lambda: _names(custom_api) == set())
    assert _deleted_order(kube_emulator, since) == ["grandchild", "child", "root"]


def test_foreground_does_not_wait_for_non_blocking_dependents(custom_api, taskaction):
    root = _create(custom_api, taskaction("root"))
    body = taskaction("child", owners=[root], finalizers=[KEEP])
    body["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    _create(custom_api, body)
    custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "root", body=V1DeleteOptions(propagation_policy="Foreground")
    )
    _wait(lambda: _names(custom_api) == {"child"})
    assert custom_api.get_namespaced_custom_object(G, V, NS, P, "child")["metadata"][
        "deletionTimestamp"
    ]


def test_orphan_strips_owner_references(custom_api, taskaction, kube_emulator):
    root = _create(custom_api, taskaction("root"))
    other = _create(custom_api, taskaction("other"))
    _create(custom_api, taskaction("child", owners=[root]))
    _create(custom_api, taskaction("shared", owners=[root, other]))
    out = custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "root", propagation_policy="Orphan"
    )
    assert out["metadata"]["finalizers"] == ["orphan"]
    _wait(lambda: "root" not in _names(custom_api))
    child = custom_api.get_namespaced_custom_object(G, V, NS, P, "child")
    assert "ownerReferences" not in child["metadata"]
    shared = custom_api.get_namespaced_custom_object(G, V, NS, P, "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other"]


def test_several_owners_keep_a_dependent_alive(custom_api, taskaction, kube_emulator):
    a = _create(custom_api, taskaction("a"))
    b = _create(custom_api, taskaction("b"))
    _create(custom_api, taskaction("dep", owners=[a, b]))
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "a")
    _wait(
        lambda: (
            [
                r["name"]
                for r in custom_api.get_namespaced_custom_object(G, V, NS, P, "dep")["metadata"][
                    "ownerReferences"
                ]
            ]
            == ["b"]
        )
    )
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "b")
    _wait(lambda: _names(custom_api) == set())


def test_owner_uid_mismatch_is_dangling(custom_api, taskaction):
    _create(custom_api, taskaction("owner"))
    fake = {"metadata": {"name": "owner", "uid": "11111111-1111-1111-1111-111111111111"}}
    _create(custom_api, taskaction("dep", owners=[fake]))
    _wait(lambda: _names(custom_api) == {"owner"})


def test_dependent_created_after_owner_vanished_is_collected(custom_api, taskaction):
    owner = _create(custom_api, taskaction("owner"))
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "owner")
    late = _create(custom_api, taskaction("late", owners=[owner]))  # Accepted ...
    assert late["metadata"]["name"] == "late"
    _wait(lambda: _names(custom_api) == set())  # ... then collected


def test_owner_in_another_namespace_counts_as_absent(custom_api, core_api, taskaction):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="other")))
    owner = _create(custom_api, taskaction("owner"), ns="other")
    _create(custom_api, taskaction("dep", owners=[owner]))
    _wait(lambda: _names(custom_api) == set())
    assert _names(custom_api, "other") == {"owner"}


def test_unresolvable_owner_kind_is_left_alone(custom_api, taskaction, kube_emulator):
    body = taskaction("dep")
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "example.com/v1",
            "kind": "Unknown",
            "name": "x",
            "uid": "22222222-2222-2222-2222-222222222222",
        }
    ]
    _create(custom_api, body)
    assert kube_emulator.wait_gc_idle()
    assert _names(custom_api) == {"dep"}


def test_cycle_guard_unblocks_before_foreground_delete(custom_api, taskaction, kube_emulator):
    a = _create(custom_api, taskaction("a"))
    b = _create(custom_api, taskaction("b", owners=[a]))
    c = _create(custom_api, taskaction("c", owners=[b]))
    _create(custom_api, taskaction("d", owners=[c], finalizers=[KEEP]))
    # c waits for d (held by its finalizer) in foreground deletion ...
    custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "c", body=V1DeleteOptions(propagation_policy="Foreground")
    )
    kube_emulator.wait_gc_idle()
    # ... so when a is deleted in foreground, b's reference to a stops blocking.
    custom_api.delete_namespaced_custom_object(
        G, V, NS, P, "a", body=V1DeleteOptions(propagation_policy="Foreground")
    )
    _wait(lambda: "a" not in _names(custom_api))
    b_now = custom_api.get_namespaced_custom_object(G, V, NS, P, "b")
    assert b_now["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is False
    assert "foregroundDeletion" in b_now["metadata"]["finalizers"]
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "d", {"metadata": {"finalizers": None}})
    _wait(lambda: _names(custom_api) == set())


def test_gc_pause_knob(custom_api, taskaction, kube_emulator):
    root = _create(custom_api, taskaction("root"))
    _create(custom_api, taskaction("child", owners=[root]))
    kube_emulator.faults.gc_paused = True
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "root")
    time.sleep(0.3)
    assert _names(custom_api) == {"child"}
    kube_emulator.faults.gc_paused = False
    _wait(lambda: _names(custom_api) == set())


# --- namespaces -----------------------------------------------------------------------------


def test_namespace_deletion_terminates_then_empties(custom_api, core_api, taskaction):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="doomed")))
    _create(custom_api, taskaction("a", finalizers=[KEEP]), ns="doomed")
    core_api.delete_namespace("doomed")
    assert core_api.read_namespace("doomed").status.phase == "Terminating"
    # Updates to a terminating namespace are allowed and do not finish it early.
    core_api.patch_namespace("doomed", {"metadata": {"labels": {"x": "y"}}})
    assert core_api.read_namespace("doomed").status.phase == "Terminating"
    with pytest.raises(ApiException) as err:
        _create(custom_api, taskaction("b"), ns="doomed")
    status = _status(err.value)
    assert err.value.status == 403 and status["reason"] == "Forbidden"
    assert status["details"]["causes"][0]["reason"] == "NamespaceTerminating"
    assert "because it is being terminated" in status["message"]
    _wait(
        lambda: custom_api.get_namespaced_custom_object(G, V, "doomed", P, "a")["metadata"].get(
            "deletionTimestamp"
        )
    )
    custom_api.patch_namespaced_custom_object(
        G, V, "doomed", P, "a", {"metadata": {"finalizers": None}}
    )

    def gone() -> bool:
        try:
            core_api.read_namespace("doomed")
        except ApiException as exc:
            return exc.status == 404
        return False

    _wait(gone)
