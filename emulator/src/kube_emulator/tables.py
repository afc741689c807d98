"""``meta.k8s.io/v1`` Table responses, so ``kubectl get`` prints the CRD's printer columns.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...``. For a custom
kind the server (apiextensions' table convertor) evaluates each ``additionalPrinterColumns``
JSONPath (``{<jsonPath>}``, missing keys allowed) and builds the cell from the first result:

- ``string``: the value printed as JSONPath prints it (maps and lists as JSON, numbers as Go
  prints them, null as ``<no value>``);
- ``integer`` / ``number`` / ``boolean``: the value if it has that JSON type (an integer
  column truncates a float), else an empty cell;
- ``date``: an RFC 3339 string as an age (``5m``), ``<invalid>`` when it does not parse.

No result, or an evaluation error, gives an empty cell (kubectl prints ``<none>``). A CRD
version without columns gets the server's default ``Age`` column. Each row carries the
object's metadata (``PartialObjectMetadata``). See
https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#additional-printer-columns
"""

from __future__ import annotations

import datetime
import json
import math
import time
from decimal import Decimal
from typing import Any

from .jsonpath import JSONPathError, find
from .resources import ResourceType

TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_CREATION_TIMESTAMP_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_VERBATIM = "x-emulator-verbatim"  # a column whose value is the cell as it is
_DEFAULT_CRD_COLUMNS = [
    {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": _CREATION_TIMESTAMP_DESCRIPTION,
    }
]


def wants_table(accept: str | None) -> bool:
    if not accept:
        return False
    first = accept.split(",")[0].replace(" ", "")
    return "as=Table" in first and "g=meta.k8s.io" in first and "v=v1" in first


def _columns(rtype: ResourceType, version: str) -> list[dict[str, Any]]:
    if rtype.plural == "namespaces" and rtype.builtin:
        return [
            {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]
    if rtype.builtin:
        # The server's default table convertor (kinds without printers of their own): a
        # "date" column whose cell is the timestamp itself, not an age.
        return [
            {
                "name": "Created At",
                "type": "date",
                "jsonPath": ".metadata.creationTimestamp",
                "description": _CREATION_TIMESTAMP_DESCRIPTION,
                _VERBATIM: True,
            }
        ]
    columns = rtype.printer_columns.get(version) or []
    return list(columns) if columns else list(_DEFAULT_CRD_COLUMNS)


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration."""
    s = math.trunc(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years = hours // (24 * 365)
    if years < 8:
        days = (hours // 24) % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{years}y"


def _age(value: str, now: float) -> str:
    """A ``date`` cell: metav1.Time's query-parameter parsing, then a human age."""
    if value in ("", "null"):
        return "<unknown>"  # the zero time
    try:
        stamp = datetime.datetime.fromisoformat(value)
    except ValueError:
        return "<invalid>"
    if stamp.tzinfo is None or "T" not in value:
        return "<invalid>"  # RFC 3339 needs the time and an offset
    return human_duration(now - stamp.timestamp())


# --- Go's text forms (JSONPath printing of a string column) ---------------------------------


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits and the decimal point position (0.d1d2... x 10^dp)."""
    digits_tuple = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    exponent = int(digits_tuple.exponent)
    point = len(digits) + exponent
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", point


def _format_e(digits: str, point: int, negative: bool) -> str:
    exponent = point - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exponent < 0 else "+"
    return f"{'-' if negative else ''}{mantissa}e{sign}{abs(exponent):02d}"


def _format_f(digits: str, point: int, negative: bool) -> str:
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    return ("-" if negative else "") + text


def go_float_text(value: float) -> str:
    """fmt.Sprint(float64): %g with the shortest digits; e-notation for exponents below -4
    or from 6 on (``1e+06``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    digits, point = _shortest_digits(value)
    exponent = point - 1
    if exponent < -4 or exponent >= 6:
        return _format_e(digits, point, value < 0)
    return _format_f(digits, point, value < 0)


def go_json_float(value: float) -> str:
    """encoding/json's float64: plain decimal unless tiny or huge, then e-notation."""
    if value == 0:
        return "0" if math.copysign(1, value) > 0 else "-0"
    digits, point = _shortest_digits(value)
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        text = _format_e(digits, point, value < 0)
        return text.replace("e-0", "e-") if "e-0" in text else text
    return _format_f(digits, point, value < 0)


def go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, map keys sorted, HTML characters escaped."""
    if isinstance(value, dict):
        items = (f"{go_json(str(k))}:{go_json(value[k])}" for k in sorted(value))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_json_float(value)
    if value is None:
        return "null"
    text = json.dumps(str(value), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def jsonpath_text(value: Any) -> str:
    """How client-go's JSONPath prints one result."""
    if isinstance(value, dict | list):
        return go_json(value)
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float_text(value)
    return str(value)


# --- cells and tables -------------------------------------------------------------------------


def _typed_cell(column_type: str, value: Any, now: float) -> Any:
    """apiextensions' cellForJSONValue."""
    if value is None:
        return None
    if column_type == "integer":
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return math.trunc(value)
    elif column_type == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif column_type == "boolean":
        if isinstance(value, bool):
            return value
    elif column_type == "date":
        if isinstance(value, str):
            return _age(value, now)
    return None


def cell(column: dict[str, Any], obj: dict[str, Any], now: float) -> Any:
    """One column's cell for ``obj``, as the API server computes it."""
    try:
        results = find(obj, column.get("jsonPath", ""))
    except JSONPathError:
        return None
    if not results:
        return None
    value = results[0]
    column_type = column.get("type", "string")
    if column.get(_VERBATIM):
        return value
    if column_type == "string":
        return jsonpath_text(value)
    return _typed_cell(column_type, value, now)


def _definition(column: dict[str, Any]) -> dict[str, Any]:
    description = column.get("description") or (
        f"Custom resource definition column (in JSONPath format): {column.get('jsonPath', '')}"
    )
    return {
        "name": column["name"],
        "type": column.get("type", "string"),
        "format": column.get("format", ""),
        "description": description,
        "priority": column.get("priority", 0),
    }


def to_table(
    rtype: ResourceType, version: str, objects: list[dict[str, Any]], list_meta: dict[str, Any]
) -> dict[str, Any]:
    columns = _columns(rtype, version)
    name_column = {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": _NAME_DESCRIPTION,
        "priority": 0,
    }
    definitions = [name_column] + [_definition(c) for c in columns]
    now = time.time()
    rows = [
        {
            "cells": [obj["metadata"]["name"]] + [cell(c, obj, now) for c in columns],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in objects
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    }
