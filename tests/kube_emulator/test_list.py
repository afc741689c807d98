"""Emulator lists: label/field selectors, pagination, resourceVersion semantics."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kube_emulator.selectors import parse_label_selector
from kubernetes.client import ApiException

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"
COLL = f"/apis/{G}/{V}/namespaces/{NS}/{P}"


def _status(exc: ApiException) -> dict:
    return json.loads(exc.body if isinstance(exc.body, str) else exc.body.decode())


def _list(api, **kwargs):
    return api.list_namespaced_custom_object(G, V, NS, P, **kwargs)


def _names(result) -> list[str]:
    return [i["metadata"]["name"] for i in result["items"]]


@pytest.fixture
def labelled(custom_api, taskaction):
    for name, labels in (
        ("a", {"env": "prod", "tier": "db", "n": "5"}),
        ("b", {"env": "dev", "tier": "web", "n": "x"}),
        ("c", {"env": "qa"}),
        ("d", {}),
    ):
        custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction(name, labels=labels))
    return custom_api


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("env=prod", ["a"]),
        ("env==prod", ["a"]),
        ("env!=prod", ["b", "c", "d"]),  # != matches objects without the key
        ("tier notin (db)", ["b", "c", "d"]),
        ("env in (dev, qa)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c", "d"]),
        ("n>3", ["a"]),  # non-integer "x" never matches
        ("n<9", ["a"]),
        ("env in (prod,dev),tier!=db,!gone", ["b"]),
        ("", ["a", "b", "c", "d"]),
    ],
)
def test_label_selectors(labelled, selector, expected):
    assert _names(_list(labelled, label_selector=selector)) == expected


@pytest.mark.parametrize("selector", ["env in ()", "a b", "=x", "env=(", "bad key=1", "k=-v-"])
def test_bad_label_selector_is_bad_request(labelled, selector):
    with pytest.raises(ApiException) as err:
        _list(labelled, label_selector=selector)
    assert err.value.status == 400 and _status(err.value)["reason"] == "BadRequest"


def test_field_selectors(labelled):
    assert _names(_list(labelled, field_selector="metadata.name=b")) == ["b"]
    assert _names(_list(labelled, field_selector="metadata.name!=b")) == ["a", "c", "d"]
    assert _names(_list(labelled, field_selector="metadata.namespace==flyte,metadata.name==c")) == [
        "c"
    ]
    with pytest.raises(ApiException) as err:
        _list(labelled, field_selector="spec.runName=r")
    assert err.value.status == 400
    assert _status(err.value)["message"] == "field label not supported: spec.runName"


def test_pagination_serves_one_snapshot(labelled, taskaction, kube_emulator):
    page = _list(labelled, limit=2)
    assert _names(page) == ["a", "b"]
    token = page["metadata"]["continue"]
    assert page["metadata"]["remainingItemCount"] == 2
    snapshot_rv = page["metadata"]["resourceVersion"]
    labelled.create_namespaced_custom_object(G, V, NS, P, taskaction("bb"))
    labelled.delete_namespaced_custom_object(G, V, NS, P, "c")
    page2 = _list(labelled, limit=2, _continue=token)
    assert _names(page2) == ["c", "d"]  # the later writes are not visible
    assert page2["metadata"]["resourceVersion"] == snapshot_rv
    assert "continue" not in page2["metadata"]
    assert _names(_list(labelled)) == ["a", "b", "bb", "d"]


def test_expired_and_malformed_continue_tokens(labelled, kube_emulator):
    page = _list(labelled, limit=1)
    labelled.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "x"}})
    kube_emulator.compact()
    with pytest.raises(ApiException) as err:
        _list(labelled, limit=1, _continue=page["metadata"]["continue"])
    status = _status(err.value)
    assert err.value.status == 410 and status["reason"] == "Expired"
    fresh = status["metadata"]["continue"]  # an inconsistent continuation is offered
    assert _names(_list(labelled, limit=10, _continue=fresh)) == ["b", "c", "d"]
    with pytest.raises(ApiException) as err:
        _list(labelled, _continue="not-a-token")
    assert err.value.status == 400
    assert _status(err.value)["message"].startswith("invalid continue token")


def test_resource_version_match_exact_reads_history(labelled, kube_emulator):
    before = kube_emulator.store.rv
    labelled.delete_namespaced_custom_object(G, V, NS, P, "a")
    labelled.patch_namespaced_custom_object(G, V, NS, P, "b", {"spec": {"group": "new"}})
    old = _list(labelled, resource_version=str(before), resource_version_match="Exact")
    assert _names(old) == ["a", "b", "c", "d"]
    assert "group" not in old["items"][1]["spec"]
    assert old["metadata"]["resourceVersion"] == str(before)
    assert _names(_list(labelled, resource_version="0")) == ["b", "c", "d"]
    kube_emulator.compact()
    with pytest.raises(ApiException) as err:
        _list(labelled, resource_version=str(before), resource_version_match="Exact")
    assert err.value.status == 410


def test_list_option_errors(kube_raw):
    status, _, _ = kube_raw("GET", f"{COLL}?resourceVersionMatch=Exact")
    assert status == 422
    status, _, _ = kube_raw("GET", f"{COLL}?sendInitialEvents=true")
    assert status == 422
    status, _, _ = kube_raw("GET", f"{COLL}?resourceVersion=x1")
    assert status == 500


def test_percent_encoded_selector_is_decoded_once(labelled, kube_raw):
    status, _, data = kube_raw(
        "GET", f"{COLL}?labelSelector=env%20in%20%28prod%2Cdev%29%2Ctier%21%3Ddb%2C%21gone"
    )
    assert status == 200 and _names(json.loads(data)) == ["b"]


# --- property: the parser agrees with a direct reading of each requirement ------------------

_keys = st.sampled_from(["a", "b", "flyte.org/run"])
_values = st.sampled_from(["x", "y", "1", "7"])
_labels = st.dictionaries(_keys, _values, max_size=3)


@st.composite
def _requirement(draw):
    key = draw(_keys)
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!", ">", "<"]))
    if op in ("in", "notin"):
        vals = draw(st.lists(_values, min_size=1, max_size=3))
        text = f"{key} {op} ({', '.join(vals)})"

        def check(labels, key=key, vals=vals, op=op):
            return (labels.get(key) in vals) if op == "in" else (labels.get(key) not in vals)

    elif op == "exists":
        text, check = key, (lambda labels, key=key: key in labels)
    elif op == "!":
        text, check = f"!{key}", (lambda labels, key=key: key not in labels)
    elif op in (">", "<"):
        num = draw(st.integers(0, 9))
        text = f"{key}{op}{num}"

        def check(labels, key=key, num=num, op=op):
            value = labels.get(key, "")
            if not value.isdigit():
                return False
            return int(value) > num if op == ">" else int(value) < num

    else:
        val = draw(_values)
        text = f"{key}{op}{val}"

        def check(labels, key=key, val=val, op=op):
            return labels.get(key) != val if op == "!=" else labels.get(key) == val

    return text, check


@settings(max_examples=200, deadline=None)
@given(st.lists(_requirement(), min_size=1, max_size=3), _labels)
def test_selector_parser_matches_oracle(reqs, labels):
    selector = parse_label_selector(" , ".join(text for text, _ in reqs))
    assert selector.matches(labels) == all(check(labels) for _, check in reqs)


def test_all_namespaces_pagination_follows_key_order(custom_api, core_api, taskaction):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    # "a-b/..." sorts before "a/..." as a string but after it as a (namespace, name) key.
    for ns in ("a", "a-b"):
        core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=ns)))
        for name in ("x", "z"):
            custom_api.create_namespaced_custom_object(G, V, ns, P, taskaction(name))
    seen, token = [], None
    while True:
        page = custom_api.list_custom_object_for_all_namespaces(
            G, V, P, limit=1, **({"_continue": token} if token else {})
        )
        seen += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == [("a", "x"), ("a", "z"), ("a-b", "x"), ("a-b", "z")]
