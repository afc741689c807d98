"""Structural-schema handling for custom resources: pruning, defaulting, validation.

A real apiserver silently drops fields the CRD schema does not declare (unless
``x-kubernetes-preserve-unknown-fields``), fills ``default`` values and rejects type
mismatches with 422. Emulating that catches code that writes fields the CRD never stores.
Only the commonly used keywords are implemented; CEL rules are ignored.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from typing import Any

from .errors import FieldError, invalid, not_supported, required

_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def _path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def prune(
    value: Any,
    schema: dict[str, Any] | None,
    *,
    root: bool = False,
    path: str = "",
    dropped: list[str] | None = None,
) -> Any:
    """Drop what the schema does not declare; ``dropped`` collects the paths removed."""
    if schema is None or (
        schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties")
    ):
        return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub_path = _path(path, key)
            if root and key in _ROOT_KEEP:
                out[key] = item
            elif key in props:
                out[key] = prune(item, props[key], path=sub_path, dropped=dropped)
            elif isinstance(additional, dict):
                out[key] = prune(item, additional, path=sub_path, dropped=dropped)
            elif preserve or additional is True:
                out[key] = item
            elif dropped is not None:
                dropped.append(sub_path)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            prune(item, schema["items"], path=f"{path}[{i}]", dropped=dropped)
            for i, item in enumerate(value)
        ]
    return value


def apply_defaults(value: Any, schema: dict[str, Any] | None) -> Any:
    if schema is None:
        return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in list(value):
                if key not in props:
                    value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def validate(value: Any, schema: dict[str, Any] | None, path: str = "") -> list[FieldError]:
    if schema is None:
        return []
    errs: list[FieldError] = []
    if value is None:
        if schema.get("nullable"):
            return []
        if schema.get("type"):
            return [_type_error(path, value, schema["type"])]
        return []
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, str | int) or isinstance(value, bool):
            errs.append(_type_error(path, value, "integer or string"))
        return errs
    typ = schema.get("type")
    if typ and not _type_ok(value, typ):
        return [_type_error(path, value, typ)]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(not_supported(path, value, [str(v) for v in schema["enum"]]))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errs.append(invalid(path, value, f"must have at most {schema['maxLength']} characters"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errs.append(
                invalid(
                    path,
                    value,
                    f"{path} in body should be at least {schema['minLength']} chars long",
                )
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(invalid(path, value, f"{path} in body should match '{schema['pattern']}'"))
        if schema.get("format") == "byte" and not _is_base64(value):
            errs.append(_type_error(path, value, "byte"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(
                invalid(
                    path,
                    value,
                    f"{path} in body should be greater than or equal to {schema['minimum']}",
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(
                invalid(
                    path,
                    value,
                    f"{path} in body should be less than or equal to {schema['maximum']}",
                )
            )
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                errs.append(required(_path(path, key)))
        for key, item in value.items():
            if key in props:
                errs += validate(item, props[key], _path(path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += validate(item, schema["additionalProperties"], _path(path, key))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(invalid(path, value, f"must have at most {schema['maxItems']} items"))
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                errs += validate(item, items, f"{path}[{i}]")
    return errs


def _is_base64(value: str) -> bool:
    """``format: byte``: standard base64, as the API server checks it."""
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if typ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    expected = _JSON_TYPES.get(typ)
    return expected is None or isinstance(value, expected)


def _type_error(path: str, value: Any, typ: str) -> FieldError:
    shown = _json_type_name(value)
    return FieldError(
        "FieldValueTypeInvalid",
        path,
        shown,
        f"{path} in body must be of type {typ}: {shown!r}".replace("'", '"'),
    )


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def process_custom_object(
    obj: dict[str, Any], schema: dict[str, Any] | None
) -> tuple[dict[str, Any], list[FieldError], list[str]]:
    """Prune, default and validate a whole custom object.

    Returns the stored form, the validation errors and the paths of pruned unknown fields
    (for ``fieldValidation``).
    """
    if schema is None:
        return obj, [], []
    dropped: list[str] = []
    pruned = prune(obj, schema, root=True, dropped=dropped)
    pruned = apply_defaults(pruned, schema)
    body = {k: v for k, v in pruned.items() if k not in _ROOT_KEEP}
    sub_schema = dict(schema)
    sub_schema["required"] = [r for r in schema.get("required") or [] if r not in _ROOT_KEEP]
    props = dict(schema.get("properties") or {})
    for key in _ROOT_KEEP:
        props.pop(key, None)
    sub_schema["properties"] = props
    return pruned, validate(body, sub_schema), dropped
