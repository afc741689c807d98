"""Strategic merge patch on built-in kinds: merge keys from ``$setElementOrder`` or the
well-known table, list directives, and ``kubectl apply`` of a changed manifest."""

from __future__ import annotations

import copy

from kube_emulator import strategic

DEPLOYMENT = {
    "metadata": {"name": "d", "finalizers": ["a", "b"]},
    "spec": {
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "args": ["serve", "--x"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "ports": [{"containerPort": 80, "name": "http"}],
                    },
                    {"name": "sidecar", "image": "side:1"},
                ],
                "volumes": [{"name": "v1", "emptyDir": {}}],
            }
        },
    },
}


def _containers(doc):
    return doc["spec"]["template"]["spec"]["containers"]


def test_kubectl_apply_patch_merges_by_the_ordered_key():
    before = copy.deepcopy(DEPLOYMENT)
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                    "containers": [
                        {
                            "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                            "env": [{"name": "B", "value": "3"}],
                            "image": "app:2",
                            "name": "app",
                        }
                    ],
                }
            }
        }
    }
    out = strategic.apply(DEPLOYMENT, patch)
    assert DEPLOYMENT == before  # inputs untouched
    app, sidecar = _containers(out)
    assert app["image"] == "app:2" and app["args"] == ["serve", "--x"]
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    assert app["ports"] == [{"containerPort": 80, "name": "http"}]
    assert sidecar == {"name": "sidecar", "image": "side:1"}


def test_well_known_keys_without_directives():
    # What `kubectl patch deployment d -p ...` sends: no $setElementOrder.
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "s:2"}]}}}}
    app, sidecar = _containers(strategic.apply(DEPLOYMENT, patch))
    assert app["image"] == "app:1" and sidecar == {"name": "sidecar", "image": "s:2"}
    added = {"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "n"}]}}}}
    assert [c["name"] for c in _containers(strategic.apply(DEPLOYMENT, added))] == [
        "app",
        "sidecar",
        "new",
    ]


def test_list_directives():
    delete = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"$patch": "delete", "name": "sidecar"}],
                    "volumes": [{"$patch": "replace"}, {"name": "v2", "emptyDir": {}}],
                }
            }
        }
    }
    out = strategic.apply(DEPLOYMENT, delete)
    assert [c["name"] for c in _containers(out)] == ["app"]
    assert out["spec"]["template"]["spec"]["volumes"] == [{"name": "v2", "emptyDir": {}}]
    reorder = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [
                        {"name": "sidecar"},
                        {"name": "app"},
                    ]
                }
            }
        }
    }
    assert [c["name"] for c in _containers(strategic.apply(DEPLOYMENT, reorder))] == [
        "sidecar",
        "app",
    ]


def test_primitive_lists_and_atomic_lists():
    out = strategic.apply(
        DEPLOYMENT,
        {"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}},
    )
    assert out["metadata"]["finalizers"] == ["b", "c"]
    # args has no patch strategy: replaced whole.
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "args": ["run"]}]}}}}
    assert _containers(strategic.apply(DEPLOYMENT, patch))[0]["args"] == ["run"]


def test_map_directives_and_null():
    retain = {
        "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}}
    }
    assert strategic.apply(DEPLOYMENT, retain)["spec"]["strategy"] == {"type": "Recreate"}
    replaced = strategic.apply(DEPLOYMENT, {"spec": {"strategy": {"$patch": "replace", "x": 1}}})
    assert replaced["spec"]["strategy"] == {"x": 1}
    gone = strategic.apply(DEPLOYMENT, {"spec": {"strategy": {"$patch": "delete"}}})
    assert "strategy" not in gone["spec"]
    assert "template" not in strategic.apply(DEPLOYMENT, {"spec": {"template": None}})["spec"]
