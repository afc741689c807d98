"""Printer columns as the API server computes them: client-go JSONPath (filters, slices,
unions, recursive descent, missing keys, errors) and apiextensions' typed cells."""

from __future__ import annotations

import pytest
from kube_emulator import jsonpath
from kube_emulator.jsonpath import JSONPathError, find
from kube_emulator.tables import cell, go_float_text, go_json, human_duration

OBJ = {
    "metadata": {
        "name": "a1",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"app.kubernetes.io/name": "svc", "tier": "x"},
    },
    "spec": {"runName": "r", "items": [1, 2, 3, 4], "nested": {"b": [1, 2.5], "a": "<&>"}},
    "status": {
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "Aborted"},
            {"type": "Succeeded", "status": "False", "reason": "NotReached"},
            {"type": "Failed", "status": "True", "reason": "Aborted", "observedGeneration": 2},
        ],
        "phaseHistory": [{"phase": "QUEUED"}, {"phase": "RUNNING"}],
        "attempts": 2,
        "ratio": 0.5,
        "whole": 3.0,
        "done": True,
        "empty": [],
        "nothing": None,
    },
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (".spec.runName", ["r"]),
        ("$.spec.runName", ["r"]),
        (".spec.missing", []),
        (".spec.missing.deeper", []),
        (".spec.runName.deeper", []),  # a field of a string: nothing, not an error
        (".spec.items[0]", [1]),
        (".spec.items[-1]", [4]),
        (".spec.items[1:3]", [2, 3]),
        (".spec.items[-2:]", [3, 4]),
        (".spec.items[::2]", [1, 3]),
        (".spec.items[*]", [1, 2, 3, 4]),
        (".spec.items[0,2]", [1, 3]),
        (".spec.items[4:4]", []),  # an empty range is allowed even past the end
        (".status.phaseHistory[-1:].phase", ["RUNNING"]),
        (".status.phaseHistory[*].phase", ["QUEUED", "RUNNING"]),
        ('.status.conditions[?(@.type=="Progressing")].reason', ["Aborted"]),
        (".status.conditions[?(@.type == 'Failed')].status", ["True"]),
        ('.status.conditions[?(@.type!="Progressing")].type', ["Succeeded", "Failed"]),
        (".status.conditions[?(@.observedGeneration)].type", ["Failed"]),
        (".status.conditions[?(@.observedGeneration>1)].type", ["Failed"]),
        (".status.conditions[?(@.observedGeneration<=1)].type", []),
        (".spec.items[?(@ >= 3)]", [3, 4]),
        ('.status.conditions[?(@.type=="Nope")].reason', []),
        (r".metadata.labels.app\.kubernetes\.io/name", ["svc"]),
        (".metadata.labels['tier']", ["x"]),
        (".metadata.labels.*", ["svc", "x"]),  # map values in key order
        ("..phase", ["QUEUED", "RUNNING"]),
        (".spec.nested", [{"b": [1, 2.5], "a": "<&>"}]),
        (".status.nothing", [None]),
        (".status.done", [True]),
    ],
)
def test_find(path, expected):
    assert find(OBJ, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        ".spec.items[4]",  # out of range
        ".status.empty[-1:]",  # [-1:] of an empty list
        ".spec.runName[0]",  # index into a string
        ".spec.nested[?(@.a)]",  # filter over a map
        '.spec.items[?(@ == "1")]',  # string vs number
        ".spec.items[?(@ == 1.0)]",  # integer vs float
        ".status.conditions[*].reason[0]",
        ".spec.items[::0]",
    ],
)
def test_find_errors(path):
    with pytest.raises(JSONPathError):
        find(OBJ, path)


@pytest.mark.parametrize("path", [".spec.items[x]", ".spec[?(@.a", ".spec.items[", "%"])
def test_parse_errors(path):
    with pytest.raises(JSONPathError):
        jsonpath.compile_path(path)


def _cell(column_type: str, path: str, obj=OBJ, now: float = 1767225600.0 + 300):
    return cell({"name": "c", "type": column_type, "jsonPath": path}, obj, now)


def test_string_cells_print_as_jsonpath_does():
    assert _cell("string", ".spec.runName") == "r"
    assert _cell("string", ".status.attempts") == "2"
    assert _cell("string", ".status.ratio") == "0.5"
    assert _cell("string", ".status.whole") == "3"  # Go prints float64 3 as "3"
    assert _cell("string", ".status.done") == "true"
    assert _cell("string", ".status.nothing") == "<no value>"
    assert _cell("string", ".spec.nested") == '{"a":"\\u003c\\u0026\\u003e","b":[1,2.5]}'
    assert _cell("string", ".status.phaseHistory[*].phase") == "QUEUED"  # the first result
    assert _cell("string", ".spec.missing") is None
    assert _cell("string", ".status.empty[-1:].phase") is None  # an error: empty cell


def test_typed_cells():
    assert _cell("integer", ".status.attempts") == 2
    assert _cell("integer", ".status.ratio") == 0  # truncated
    assert _cell("integer", ".spec.runName") is None
    assert _cell("integer", ".status.done") is None
    assert _cell("number", ".status.attempts") == 2.0
    assert _cell("boolean", ".status.done") is True
    assert _cell("boolean", ".status.attempts") is None
    assert _cell("date", ".metadata.creationTimestamp") == "5m"
    assert _cell("date", ".spec.runName") == "<invalid>"
    assert _cell("date", ".status.attempts") is None
    assert _cell("string", ".metadata.creationTimestamp") == "2026-01-01T00:00:00Z"


def test_go_number_and_json_forms():
    assert [go_float_text(v) for v in (0.5, 3.0, 1e6, 123456.0, 1e-5, -2.25)] == [
        "0.5",
        "3",
        "1e+06",
        "123456",
        "1e-05",
        "-2.25",
    ]
    assert go_json({"z": 1, "a": [True, None, 1e21, 1e-7, 2.0]}) == (
        '{"a":[true,null,1e+21,1e-7,2],"z":1}'
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-1.5, "0s"),
        (-2, "<invalid>"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (185, "3m5s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (49 * 3600, "2d1h"),
        (10 * 86400, "10d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def test_crd_printer_columns_are_validated(kube_emulator):
    from kube_emulator.resources import CRDS
    from kube_emulator.store import StatusError

    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [
                        {"name": "A", "type": "text", "jsonPath": ".spec.a"},
                        {"name": "B", "type": "string", "jsonPath": "spec.b"},
                        {"type": "integer", "format": "weird", "jsonPath": ".spec.c"},
                    ],
                }
            ],
        },
    }
    with pytest.raises(StatusError) as err:
        kube_emulator.store.create(CRDS, None, crd)
    assert err.value.code == 422
    fields = [c["field"] for c in err.value.details["causes"]]
    assert fields == [
        "spec.versions[0].additionalPrinterColumns[0].type",
        "spec.versions[0].additionalPrinterColumns[1].jsonPath",
        "spec.versions[0].additionalPrinterColumns[2].name",
        "spec.versions[0].additionalPrinterColumns[2].format",
    ]
    assert 'Unsupported value: "text": supported values: "boolean", "date"' in err.value.message
    assert 'Invalid value: "spec.b": must be a simple json path starting with .' in (
        err.value.message
    )
