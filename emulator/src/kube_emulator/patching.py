"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) over plain dicts; strategic merge
patch (built-in kinds only) lives in ``strategic``."""

from __future__ import annotations

import copy
from typing import Any

from . import errors, strategic
from .errors import FieldError, StatusError, bad_request, invalid, unsupported_media_type

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class PatchFailed(Exception):
    """A JSON patch operation that cannot apply (missing path, failing test)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _decode_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchFailed(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        node = _child(node, part)
    return node, parts[-1]


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        if part not in node:
            raise PatchFailed(f"missing path element {part!r}")
        return node[part]
    if isinstance(node, list):
        index = _index(node, part, allow_end=False)
        return node[index]
    raise PatchFailed(f"cannot traverse into a scalar at {part!r}")


def _index(node: list[Any], part: str, *, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(node)
    if not part.isdigit() or (len(part) > 1 and part.startswith("0")):
        raise PatchFailed(f"invalid array index {part!r}")
    index = int(part)
    if index > len(node) or (index == len(node) and not allow_end):
        raise PatchFailed(f"array index {index} out of bounds")
    return index


def _get(doc: Any, path: str) -> Any:
    node = doc
    for part in _decode_pointer(path):
        node = _child(node, part)
    return node


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _decode_pointer(path)
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchFailed(f"cannot add to a scalar at {path!r}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _decode_pointer(path)
    if not parts:
        raise PatchFailed("cannot remove the whole document")
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchFailed(f"unable to remove nonexistent key: {last}: missing value")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise PatchFailed(f"cannot remove from a scalar at {path!r}")


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise bad_request("the server rejected our request due to an error in our request")
        name = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise bad_request(f"the server rejected our request: operation {name!r} needs a path")
        if name in ("add", "replace", "test") and "value" not in op:
            raise bad_request(f"the server rejected our request: operation {name!r} needs a value")
        if name == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif name == "remove":
            doc, _ = _remove(doc, path)
        elif name == "replace":
            _get(doc, path)  # replace requires the target to exist
            if _decode_pointer(path):
                doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif name in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise bad_request(f"the server rejected our request: {name!r} needs 'from'")
            if name == "move":
                doc, value = _remove(doc, source)
            else:
                value = copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif name == "test":
            if _get(doc, path) != op["value"]:
                raise PatchFailed(f"testing value {path} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {name}")
    return doc


def apply_patch(target: dict[str, Any], content_type: str, body: Any, *, builtin: bool) -> Any:
    """Return the patched document or raise the Status the real server would send."""
    if content_type == MERGE_PATCH:
        if not isinstance(body, dict):
            raise _patch_invalid(body, "must be a JSON object for a merge patch")
        return merge_patch(target, body)
    if content_type == JSON_PATCH:
        try:
            return json_patch(target, body)
        except PatchFailed as exc:
            raise _patch_invalid(body, str(exc)) from None
    if content_type == STRATEGIC_MERGE_PATCH and builtin:
        if not isinstance(body, dict):
            raise _patch_invalid(body, "must be a JSON object for a strategic merge patch")
        return strategic.apply(target, body)
    raise unsupported_media_type(content_type)


def _patch_invalid(body: Any, detail: str) -> StatusError:
    err: FieldError = invalid("patch", body, detail)
    return errors.invalid_patch(err)
