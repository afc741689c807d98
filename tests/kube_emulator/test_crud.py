"""Emulator: create/get/list/update, the status subresource, RV discipline, patch, errors.

Driven by the real ``kubernetes`` client; the expected behaviour is the documented one
(https://kubernetes.io/docs/reference/using-api/api-concepts/ and the API conventions,
https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md).
"""

from __future__ import annotations

import json
import re

import pytest
from kubernetes.client import ApiException

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"


def _status(exc: ApiException) -> dict:
    body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
    return json.loads(body)


def _create(api, body, ns=NS):
    return api.create_namespaced_custom_object(G, V, ns, P, body)


def _get(api, name, ns=NS):
    return api.get_namespaced_custom_object(G, V, ns, P, name)


def _rv(obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


# --- server-owned metadata ------------------------------------------------------------


def test_create_sets_server_metadata(custom_api, taskaction):
    body = taskaction("a1")
    body["metadata"].update(
        uid="forged", generation=7, deletionTimestamp="2020-01-01T00:00:00Z", namespace=NS
    )
    obj = _create(custom_api, body)
    md = obj["metadata"]
    assert md["uid"] != "forged" and re.fullmatch(r"[0-9a-f-]{36}", md["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", md["creationTimestamp"])
    assert md["generation"] == 1
    assert "deletionTimestamp" not in md
    assert md["namespace"] == NS
    assert re.fullmatch(r"[1-9]\d*", md["resourceVersion"])
    assert obj["apiVersion"] == "flyte.org/v1" and obj["kind"] == "TaskAction"
    assert "selfLink" not in md


def test_create_drops_status_and_prunes_unknown_fields(custom_api, taskaction):
    body = taskaction("a1", notInSchema="x")
    body["status"] = {"attempts": 3}
    obj = _create(custom_api, body)
    assert "status" not in obj
    assert "notInSchema" not in obj["spec"]  # structural-schema pruning


def test_create_rejects_resource_version(custom_api, taskaction):
    body = taskaction("a1")
    body["metadata"]["resourceVersion"] = "5"
    with pytest.raises(ApiException) as err:
        _create(custom_api, body)
    assert err.value.status == 500
    assert _status(err.value)["message"] == (
        "resourceVersion should not be set on objects to be created"
    )


def test_already_exists_status_body(custom_api, taskaction):
    _create(custom_api, taskaction("a1"))
    with pytest.raises(ApiException) as err:
        _create(custom_api, taskaction("a1"))
    assert err.value.status == 409
    assert _status(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'taskactions.flyte.org "a1" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "a1", "group": "flyte.org", "kind": "taskactions"},
        "code": 409,
    }


def test_not_found_status_body(custom_api):
    with pytest.raises(ApiException) as err:
        _get(custom_api, "missing")
    assert err.value.status == 404 and err.value.reason == "Not Found"
    status = _status(err.value)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'taskactions.flyte.org "missing" not found'
    assert status["details"] == {"name": "missing", "group": "flyte.org", "kind": "taskactions"}


def test_create_in_missing_namespace_names_the_namespace(custom_api, taskaction):
    with pytest.raises(ApiException) as err:
        _create(custom_api, taskaction("a1"), ns="nope")
    status = _status(err.value)
    assert err.value.status == 404
    assert status["message"] == 'namespaces "nope" not found'
    assert status["details"] == {"name": "nope", "kind": "namespaces"}


def test_generate_name(custom_api, taskaction):
    body = taskaction("")
    del body["metadata"]["name"]
    body["spec"]["actionName"] = "p"  # the schema wants 1 to 30 characters
    body["metadata"]["generateName"] = "p-"
    obj = _create(custom_api, body)
    assert re.fullmatch(r"p-[a-z0-9]{5}", obj["metadata"]["name"])


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda b: b["metadata"].update(name="Bad_Name"), 422, "metadata.name"),
        (lambda b: b["metadata"].pop("name"), 422, "metadata.name"),
        (lambda b: b["metadata"].update(labels={"a b": "x"}), 422, "metadata.labels"),
        (lambda b: b["metadata"].update(labels={"k": "-bad-"}), 422, "metadata.labels[k]"),
        (
            lambda b: b["metadata"].update(finalizers=["orphan", "foregroundDeletion"]),
            422,
            "metadata.finalizers",
        ),
        (lambda b: b["spec"].update(actionType="bogus"), 422, "spec.actionType"),
        (lambda b: b["spec"].pop("project"), 422, "spec.project"),
        (lambda b: b["spec"].update(interruptible="yes"), 422, "spec.interruptible"),
    ],
)
def test_validation_errors_are_invalid_with_causes(custom_api, taskaction, mutate, code, field):
    body = taskaction("a1")
    mutate(body)
    with pytest.raises(ApiException) as err:
        _create(custom_api, body)
    assert err.value.status == code
    status = _status(err.value)
    assert status["reason"] == "Invalid"
    assert status["message"].startswith("TaskAction.flyte.org ")
    assert field in [c["field"] for c in status["details"]["causes"]]


def test_owner_reference_validation(custom_api, taskaction):
    body = taskaction("a1")
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "flyte.org/v1",
            "kind": "TaskAction",
            "name": "x",
            "uid": "1",
            "controller": True,
        },
        {
            "apiVersion": "flyte.org/v1",
            "kind": "TaskAction",
            "name": "y",
            "uid": "2",
            "controller": True,
        },
        {"apiVersion": "", "kind": "TaskAction", "name": "z", "uid": "3"},
    ]
    with pytest.raises(ApiException) as err:
        _create(custom_api, body)
    assert err.value.status == 422


def test_kind_and_api_version_checks(kube_raw, taskaction):
    path = f"/apis/{G}/{V}/namespaces/{NS}/{P}"
    body = taskaction("a1")
    del body["kind"]
    status, _, data = kube_raw("POST", path, body)
    assert status == 400 and json.loads(data)["message"].startswith("Object 'Kind' is missing")
    body = taskaction("a1")
    body["apiVersion"] = "flyte.org/v2"
    status, _, data = kube_raw("POST", path, body)
    assert (
        status == 400 and "does not match the expected API version" in json.loads(data)["message"]
    )
    body = taskaction("a1")
    body["kind"] = "Other"
    status, _, _ = kube_raw("POST", path, body)
    assert status == 422
    body = taskaction("a1")
    body["metadata"]["namespace"] = "default"
    status, _, _ = kube_raw("POST", path, body)
    assert status == 400


def test_namespace_body_without_type_meta(core_api):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    ns = core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="team-a")))
    assert ns.spec.finalizers == ["kubernetes"]
    assert ns.status.phase == "Active"
    assert ns.metadata.labels["kubernetes.io/metadata.name"] == "team-a"
    with pytest.raises(ApiException) as err:
        core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="team-a")))
    assert _status(err.value)["message"] == 'namespaces "team-a" already exists'
    with pytest.raises(ApiException) as err:
        core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="a.b")))
    assert err.value.status == 422  # namespace names are DNS labels
    names = [n.metadata.name for n in core_api.list_namespace().items]
    assert {"default", "flyte", "team-a"} <= set(names)
    with pytest.raises(ApiException) as err:
        core_api.read_namespace("nope")
    assert _status(err.value)["details"] == {"name": "nope", "kind": "namespaces"}


# --- resourceVersion and generation ----------------------------------------


def test_resource_version_is_global_and_increasing(custom_api, core_api, taskaction):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    a = _create(custom_api, taskaction("a1"))
    ns = core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="other")))
    b = _create(custom_api, taskaction("b1"))
    assert _rv(a) < int(ns.metadata.resource_version) < _rv(b)
    listed = custom_api.list_namespaced_custom_object(G, V, NS, P)
    assert int(listed["metadata"]["resourceVersion"]) == _rv(b)
    core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="other2")))
    listed = custom_api.list_namespaced_custom_object(G, V, NS, P)
    # The list RV is the store's, beyond every item's RV.
    assert int(listed["metadata"]["resourceVersion"]) > max(_rv(i) for i in listed["items"])


def test_noop_update_keeps_resource_version(custom_api, taskaction, kube_emulator):
    obj = _create(custom_api, taskaction("a1"))
    before = kube_emulator.store.rv
    same = custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", obj)
    assert same["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert kube_emulator.store.rv == before
    patched = custom_api.patch_namespaced_custom_object(G, V, NS, P, "a1", {"spec": {}})
    assert patched["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_generation_bumps_on_spec_only(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1"))
    obj = custom_api.patch_namespaced_custom_object(
        G, V, NS, P, "a1", {"metadata": {"labels": {"x": "1"}, "annotations": {"a": "b"}}}
    )
    assert obj["metadata"]["generation"] == 1
    obj = custom_api.patch_namespaced_custom_object(G, V, NS, P, "a1", {"spec": {"group": "g"}})
    assert obj["metadata"]["generation"] == 2
    obj["status"] = {"attempts": 1}
    obj = custom_api.replace_namespaced_custom_object_status(G, V, NS, P, "a1", obj)
    assert obj["metadata"]["generation"] == 2
    obj["metadata"]["generation"] = 40
    obj["spec"]["group"] = "h"
    obj = custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", obj)
    assert obj["metadata"]["generation"] == 3


# --- replace, conflicts, status subresource -----------------------------------------


def test_put_without_resource_version_is_invalid(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1"))
    del obj["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", obj)
    assert err.value.status == 422
    assert _status(err.value)["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    with pytest.raises(ApiException) as err:
        custom_api.replace_namespaced_custom_object_status(G, V, NS, P, "a1", obj)
    assert err.value.status == 422


def test_stale_put_conflicts_and_reason_tells_it_apart(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1"))
    fresh = custom_api.patch_namespaced_custom_object(G, V, NS, P, "a1", {"spec": {"group": "x"}})
    assert _rv(fresh) > _rv(obj)
    for call in (
        custom_api.replace_namespaced_custom_object,
        custom_api.replace_namespaced_custom_object_status,
    ):
        with pytest.raises(ApiException) as err:
            call(G, V, NS, P, "a1", obj)
        status = _status(err.value)
        assert err.value.status == 409 and status["reason"] == "Conflict"
        assert status["message"] == (
            'Operation cannot be fulfilled on taskactions.flyte.org "a1": the object has been '
            "modified; please apply your changes to the latest version and try again"
        )


def test_put_identity_checks(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1"))
    with pytest.raises(ApiException) as err:
        custom_api.replace_namespaced_custom_object(G, V, NS, P, "other", obj)
    assert err.value.status == 400
    assert "does not match the name on the URL" in _status(err.value)["message"]
    bad_uid = json.loads(json.dumps(obj))
    bad_uid["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(ApiException) as err:
        custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", bad_uid)
    assert err.value.status == 422
    obj["metadata"]["uid"] = ""
    obj["metadata"]["creationTimestamp"] = "2000-01-01T00:00:00Z"
    obj["spec"]["group"] = "changed"
    out = custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", obj)
    assert out["metadata"]["uid"] and out["metadata"]["creationTimestamp"] != "2000-01-01T00:00:00Z"


def test_put_missing_object_is_not_found(custom_api, taskaction):
    body = taskaction("ghost")
    body["metadata"]["resourceVersion"] = "1"
    with pytest.raises(ApiException) as err:
        custom_api.replace_namespaced_custom_object(G, V, NS, P, "ghost", body)
    assert err.value.status == 404


def test_status_subresource_isolation(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1"))
    # Main resource ignores status ...
    obj["status"] = {"attempts": 5}
    obj["spec"]["group"] = "g1"
    main = custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", obj)
    assert "status" not in main and main["spec"]["group"] == "g1"
    # ... /status ignores everything but status ...
    main["status"] = {"attempts": 2, "pluginPhase": "MISS"}
    main["spec"]["group"] = "ignored"
    main["metadata"]["labels"] = {"ignored": "yes"}
    st = custom_api.replace_namespaced_custom_object_status(G, V, NS, P, "a1", main)
    assert st["status"] == {"attempts": 2, "pluginPhase": "MISS"}
    assert st["spec"]["group"] == "g1" and "labels" not in st["metadata"]
    # ... a main PUT without status keeps it, and a status-only main write is a no-op.
    st.pop("status")
    kept = custom_api.replace_namespaced_custom_object(G, V, NS, P, "a1", st)
    assert kept["status"] == {"attempts": 2, "pluginPhase": "MISS"}
    assert kept["metadata"]["resourceVersion"] == st["metadata"]["resourceVersion"]
    noop = custom_api.patch_namespaced_custom_object(G, V, NS, P, "a1", {"status": {"attempts": 9}})
    assert noop["status"]["attempts"] == 2
    # GET /status returns the whole object; a /status PUT without status removes it.
    whole = custom_api.get_namespaced_custom_object_status(G, V, NS, P, "a1")
    assert whole["spec"]["group"] == "g1"
    whole.pop("status")
    cleared = custom_api.replace_namespaced_custom_object_status(G, V, NS, P, "a1", whole)
    assert "status" not in cleared


def test_status_patch_and_merge_semantics(custom_api, taskaction):
    _create(custom_api, taskaction("a1"))
    cond = {
        "type": "Succeeded",
        "status": "True",
        "reason": "Done",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    out = custom_api.patch_namespaced_custom_object_status(
        G,
        V,
        NS,
        P,
        "a1",
        {"status": {"conditions": [cond], "errorState": {"code": "E", "kind": "USER"}}},
    )
    assert out["status"]["conditions"] == [cond]
    # Merge patch: null deletes a key, arrays are replaced whole.
    out = custom_api.patch_namespaced_custom_object_status(
        G, V, NS, P, "a1", {"status": {"conditions": [], "errorState": None}}
    )
    assert out["status"] == {"conditions": []}


def test_status_verbs_and_unknown_subresource(kube_raw):
    base = f"/apis/{G}/{V}/namespaces/{NS}/{P}/x"
    status, _, data = kube_raw("POST", base + "/status", {})
    assert status == 405
    assert json.loads(data)["message"] == (
        'POST is not supported on resources of kind "taskactions.flyte.org"'
    )
    status, _, data = kube_raw("GET", base + "/scale")
    assert status == 404 and json.loads(data)["kind"] == "Status"


# --- patch ------------------------------------------------------------------------


def test_json_patch_and_failures(custom_api, taskaction):
    _create(custom_api, taskaction("a1", labels={"a": "1"}))
    out = custom_api.patch_namespaced_custom_object(
        G,
        V,
        NS,
        P,
        "a1",
        [
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "copy", "from": "/spec/runName", "path": "/spec/group"},
            {"op": "move", "from": "/spec/group", "path": "/spec/shortName"},
            {"op": "add", "path": "/spec/cacheKey", "value": "k"},
            {"op": "replace", "path": "/spec/cacheKey", "value": "k2"},
        ],
        _content_type="application/json-patch+json",
    )
    assert out["metadata"]["labels"] == {"b": "2"}
    assert out["spec"]["shortName"] == "r" and "group" not in out["spec"]
    assert out["spec"]["cacheKey"] == "k2"
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object(
            G,
            V,
            NS,
            P,
            "a1",
            [{"op": "test", "path": "/spec/queue", "value": "zzz"}],
            _content_type="application/json-patch+json",
        )
    assert err.value.status == 422 and _status(err.value)["reason"] == "Invalid"
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object(
            G,
            V,
            NS,
            P,
            "a1",
            [{"op": "remove", "path": "/spec/nothing"}],
            _content_type="application/json-patch+json",
        )
    assert err.value.status == 422


def test_patch_content_types(kube_raw, custom_api, taskaction):
    _create(custom_api, taskaction("a1"))
    path = f"/apis/{G}/{V}/namespaces/{NS}/{P}/a1"
    status, _, data = kube_raw(
        "PATCH", path, {"spec": {}}, {"Content-Type": "application/strategic-merge-patch+json"}
    )
    assert status == 415
    assert json.loads(data)["reason"] == "UnsupportedMediaType"
    status, _, _ = kube_raw(
        "PATCH", path, b"[]", {"Content-Type": "application/json-patch+json; charset=utf-8"}
    )
    assert status == 200
    status, _, _ = kube_raw("PATCH", path, b"[1]", {"Content-Type": "application/json-patch+json"})
    assert status == 400  # malformed JSON patch
    # A list sent with the client's default merge-patch type is refused.
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object(
            G, V, NS, P, "a1", [{"op": "add", "path": "/spec/group", "value": "x"}]
        )
    assert err.value.status == 422


def test_patch_resource_version_precondition(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1"))
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a1", {"spec": {"group": "x"}})
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object(
            G,
            V,
            NS,
            P,
            "a1",
            {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"group": "y"},
            },
        )
    assert err.value.status == 409 and _status(err.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object(G, V, NS, "taskactions", "ghost", {"spec": {}})
    assert err.value.status == 404


def test_schema_type_errors_on_status(custom_api, taskaction):
    _create(custom_api, taskaction("a1"))
    with pytest.raises(ApiException) as err:
        custom_api.patch_namespaced_custom_object_status(
            G, V, NS, P, "a1", {"status": {"attempts": "three"}}
        )
    assert err.value.status == 422
    assert _status(err.value)["details"]["causes"][0]["field"] == "status.attempts"


def test_unknown_paths_are_plain_text_404(kube_raw):
    for path in (
        "/apis/nope.org/v1/namespaces/flyte/things",
        "/apis/flyte.org/v2/namespaces/flyte/taskactions",
        "/apis/flyte.org/v1/namespaces/flyte/unknowns",
        "/apis/flyte.org/v1/taskactions/x",  # Namespaced kind on a cluster path
    ):
        status, headers, data = kube_raw("GET", path)
        assert (status, data) == (404, b"404 page not found\n"), path
        assert headers["Content-Type"].startswith("text/plain")


def test_all_namespaces_list(custom_api, core_api, taskaction):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="b-ns")))
    _create(custom_api, taskaction("x"), ns="b-ns")
    _create(custom_api, taskaction("x"), ns=NS)
    items = custom_api.list_custom_object_for_all_namespaces(G, V, P)["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == [
        ("b-ns", "x"),
        (NS, "x"),
    ]
    assert all(i["kind"] == "TaskAction" for i in items)  # CR list items keep kind


def test_list_shape_when_empty(kube_raw):
    status, headers, data = kube_raw("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}")
    body = json.loads(data)
    assert status == 200 and headers["Content-Length"] == str(len(data))
    assert body["kind"] == "TaskActionList" and body["items"] == []
    assert body["apiVersion"] == "flyte.org/v1"


def test_request_without_content_type_and_extra_params(kube_raw, taskaction):
    path = f"/apis/{G}/{V}/namespaces/{NS}/{P}?fieldManager=x&fieldValidation=Strict&pretty=true"
    status, _, data = kube_raw("POST", path, json.dumps(taskaction("a1")).encode())
    assert status == 201, data
    status, _, _ = kube_raw("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}/a1?timeout=32s")
    assert status == 200


def test_dry_run_does_not_persist(kube_raw, taskaction, kube_emulator):
    before = kube_emulator.store.rv
    status, _, _ = kube_raw(
        "POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}?dryRun=All", taskaction("a1")
    )
    assert status == 201
    assert kube_emulator.store.rv == before
    status, _, _ = kube_raw("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}/a1")
    assert status == 404


def test_field_validation_directives(kube_raw, taskaction):
    body = taskaction("a1", bogus="x")
    status, headers, _ = kube_raw("POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}", body)
    assert status == 201  # default Warn: stored pruned, with a warning header
    assert headers.get_all("Warning") == ['299 - "unknown field \\"spec.bogus\\""']
    body = taskaction("a2", bogus="x")
    status, _, data = kube_raw(
        "POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}?fieldValidation=Strict", body
    )
    assert status == 400
    assert json.loads(data)["message"] == 'strict decoding error: unknown field "spec.bogus"'
    status, headers, _ = kube_raw(
        "POST", f"/apis/{G}/{V}/namespaces/{NS}/{P}?fieldValidation=Ignore", body
    )
    assert status == 201 and headers.get("Warning") is None


def test_already_exists_while_being_deleted(custom_api, taskaction):
    _create(custom_api, taskaction("a1", finalizers=["flyte.org/keep"]))
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "a1")
    with pytest.raises(ApiException) as err:
        _create(custom_api, taskaction("a1"))
    assert _status(err.value)["message"] == (
        'object is being deleted: taskactions.flyte.org "a1" already exists'
    )


def test_builtin_list_items_omit_type_meta(kube_raw):
    status, _, data = kube_raw("GET", "/api/v1/namespaces")
    body = json.loads(data)
    assert status == 200 and body["kind"] == "NamespaceList" and body["apiVersion"] == "v1"
    assert all("kind" not in item and "apiVersion" not in item for item in body["items"])
    status, _, data = kube_raw("GET", "/api/v1/namespaces/flyte")
    assert json.loads(data)["kind"] == "Namespace"


def test_delete_on_status_is_method_not_allowed(kube_raw, custom_api, taskaction):
    _create(custom_api, taskaction("a1"))
    status, _, data = kube_raw("DELETE", f"/apis/{G}/{V}/namespaces/{NS}/{P}/a1/status")
    assert status == 405 and json.loads(data)["reason"] == "MethodNotAllowed"


# --- size limits: the API server's body limit (413) and etcd's object limit (500) ---------


def test_body_over_3_mib_is_request_entity_too_large(custom_api, taskaction, kube_emulator):
    rv_before = kube_emulator.store.rv
    with pytest.raises(ApiException) as err:
        _create(custom_api, taskaction("a1", taskTemplate="x" * (3 * 1024 * 1024)))
    assert err.value.status == 413
    assert "Retry-After" not in err.value.headers  # urllib3 would re-send a PUT
    assert _status(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Request entity too large: limit is 3145728",
        "reason": "RequestEntityTooLarge",
        "code": 413,
    }
    # The body was drained: the same pooled connection serves the next request.
    obj = _create(custom_api, taskaction("a1"))
    assert _rv(obj) == rv_before + 1


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (1_700_000, r"etcdserver: request is too large"),
        (
            2_500_000,
            r"rpc error: code = ResourceExhausted desc = trying to send message larger than "
            r"max \(\d+ vs\. 2097152\)",
        ),
    ],
)
def test_object_over_etcd_limit_is_refused_with_500(
    custom_api, taskaction, kube_emulator, size, message
):
    with pytest.raises(ApiException) as err:
        _create(custom_api, taskaction("a1", taskTemplate="x" * size))
    assert err.value.status == 500
    status = _status(err.value)
    assert "reason" not in status  # passed through from etcd, no Status reason
    assert re.fullmatch(message, status["message"])
    assert (status["status"], status["code"]) == ("Failure", 500)
    with pytest.raises(ApiException) as missing:
        _get(custom_api, "a1")
    assert missing.value.status == 404


def test_status_update_over_etcd_limit_is_refused(custom_api, taskaction):
    obj = _create(custom_api, taskaction("a1", taskTemplate="x" * 1_000_000))
    obj["status"] = {"pluginPhase": "y" * 600_000}
    with pytest.raises(ApiException) as err:
        custom_api.replace_namespaced_custom_object_status(G, V, NS, P, "a1", obj)
    assert err.value.status == 500
    assert _status(err.value)["message"] == "etcdserver: request is too large"
    assert _get(custom_api, "a1") == {k: v for k, v in obj.items() if k != "status"}
    # Just under the limit is stored.
    obj["status"] = {"pluginPhase": "y" * 500_000}
    stored = custom_api.replace_namespaced_custom_object_status(G, V, NS, P, "a1", obj)
    assert stored["status"] == obj["status"]
