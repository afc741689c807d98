"""Minimal OpenAPI documents: only what kubectl reads before it writes.

Before ``create``/``apply`` with validation on, kubectl asks whether the kind's PATCH
operation takes the ``fieldValidation`` query parameter; when it does, kubectl leaves
validation to the server (``fieldValidation=Strict``) and needs no schema of its own.
kubectl 1.29 and later ask ``/openapi/v3`` (then ``/openapi/v2``); 1.27 and 1.28 ask
``/openapi/v2``, as protobuf (``openapi_v2.Document`` of github.com/google/gnostic).

So both documents list one PATCH operation per served kind, tagged with
``x-kubernetes-group-version-kind`` and the write query parameters, and no component
schemas: ``kubectl explain`` does not work, and kubectl falls back to JSON merge patch for
custom kinds, as with a real server whose CRD schema has no patch-strategy markers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import Registry, ResourceType

# What clients ask for (Accept), and what the server answers: the "@" is not valid in a
# Content-Type (Go's mime parser rejects it), so the reply uses the dotted form.
V2_PROTOBUF_ACCEPT = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

_PATCH_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force")


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _item_path(rtype: ResourceType, version: str) -> str:
    prefix = "/" + _gv_path(rtype.group, version)
    if rtype.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{rtype.plural}/{{name}}"
    return f"{prefix}/{rtype.plural}/{{name}}"


def _patch_types(rtype: ResourceType) -> list[str]:
    types = ["application/json-patch+json", "application/merge-patch+json"]
    if rtype.builtin:
        types.append("application/strategic-merge-patch+json")
    return types


def _all_group_versions(registry: Registry) -> list[tuple[str, str]]:
    core = [("", "v1")]
    return core + [(g, v) for g, vs in sorted(registry.group_versions().items()) for v in vs]


# --- v3: JSON, one document per group-version ----------------------------------------------


def v3_group_version(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    for rtype in sorted(types, key=lambda t: t.plural):
        paths[_item_path(rtype, version)] = {
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": group,
                    "version": version,
                    "kind": rtype.kind,
                },
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string"}}
                    for name in _PATCH_PARAMS
                ],
                "requestBody": {
                    "content": {t: {"schema": {"type": "object"}} for t in _patch_types(rtype)}
                },
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def v3_root(registry: Registry) -> dict[str, Any]:
    """The index kubectl reads first; the hash lets clients cache each document."""
    paths: dict[str, Any] = {}
    for group, version in _all_group_versions(registry):
        doc = v3_group_version(registry, group, version)
        if doc is None:
            continue
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
        gv_path = _gv_path(group, version)
        paths[gv_path] = {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash={digest.upper()}"}
    return {"paths": paths}


# --- v2: one document for everything, JSON or gnostic protobuf -----------------------------


def _v2_operations(registry: Registry) -> list[tuple[str, ResourceType, str]]:
    out = []
    for group, version in _all_group_versions(registry):
        for rtype in sorted(registry.in_group_version(group, version), key=lambda t: t.plural):
            out.append((_item_path(rtype, version), rtype, version))
    return out


def v2_json(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, rtype, version in _v2_operations(registry):
        paths[path] = {
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "consumes": _patch_types(rtype),
                "produces": ["application/json"],
                "parameters": [
                    {"name": name, "in": "query", "type": "string", "uniqueItems": True}
                    for name in _PATCH_PARAMS
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": rtype.group,
                    "version": version,
                    "kind": rtype.kind,
                },
            }
        }
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
    }


def v2_protobuf(registry: Registry) -> bytes:
    """``v2_json`` as an ``openapi.v2.Document`` message (field numbers of gnostic's
    OpenAPIv2.proto); vendor extensions carry their values as YAML text, as gnostic does."""
    doc = _string(1, "2.0") + _message(2, _string(1, "Kubernetes") + _string(2, "unversioned"))
    named_paths = b""
    for path, rtype, version in _v2_operations(registry):
        params = b""
        for name in _PATCH_PARAMS:
            query = _string(2, "query") + _string(4, name) + _string(6, "string")
            # ParametersItem.parameter -> Parameter.non_body_parameter ->
            # NonBodyParameter.query_parameter_sub_schema
            params += _message(8, _message(1, _message(2, _message(3, query))))
        gvk_yaml = f"group: {json.dumps(rtype.group)}\nkind: {rtype.kind}\nversion: {version}\n"
        operation = (
            _string(5, f"patch{rtype.kind}")
            + b"".join(_string(7, t) for t in _patch_types(rtype))
            + params
            + _named_any(13, "x-kubernetes-action", "patch\n")
            + _named_any(13, "x-kubernetes-group-version-kind", gvk_yaml)
        )
        path_item = _message(8, operation)  # PathItem.patch
        named_paths += _message(2, _string(1, path) + _message(2, path_item))
    doc += _message(8, named_paths)  # Document.paths
    return doc


def _named_any(field: int, name: str, yaml_text: str) -> bytes:
    # NamedAny{name, value: Any{yaml}}
    return _message(field, _string(1, name) + _message(2, _string(2, yaml_text)))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): embedded message, string or bytes."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _string(field: int, text: str) -> bytes:
    return _message(field, text.encode())
