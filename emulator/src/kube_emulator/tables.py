"""``meta.k8s.io/v1`` Table responses, so ``kubectl get`` prints the CRD's printer columns.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...``; the server
evaluates each ``additionalPrinterColumns`` JSONPath, turns ``date`` cells into ages the way
apiextensions' table convertor does, and attaches the object's metadata to each row.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

from .resources import ResourceType

TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated."
)
_TOKEN_RE = re.compile(r"\.([A-Za-z0-9_-]+)|\[(-?\d*)(:(-?\d*))?\]|\[\*\]")


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
        return [{"name": "Created At", "type": "string", "jsonPath": ".metadata.creationTimestamp"}]
    columns = rtype.printer_columns.get(version) or []
    if not columns:
        return [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return list(columns)


def find(obj: Any, path: str) -> list[Any]:
    """A simple-JSONPath subset: ``.field``, ``[n]``, ``[a:b]`` (negative indexes too), ``[*]``."""
    nodes = [obj]
    pos = 0
    path = path.strip().removeprefix("{").removesuffix("}")
    while pos < len(path):
        match = _TOKEN_RE.match(path, pos)
        if not match:
            return []
        pos = match.end()
        out: list[Any] = []
        for node in nodes:
            if match.group(1) is not None:
                if isinstance(node, dict) and match.group(1) in node:
                    out.append(node[match.group(1)])
            elif isinstance(node, list):
                if match.group(0) == "[*]":
                    out.extend(node)
                elif match.group(3) is not None:
                    start = int(match.group(2)) if match.group(2) else None
                    stop = int(match.group(4)) if match.group(4) else None
                    out.extend(node[start:stop])
                elif match.group(2):
                    index = int(match.group(2))
                    if -len(node) <= index < len(node):
                        out.append(node[index])
        nodes = out
    return nodes


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
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


def _cell(column: dict[str, Any], obj: dict[str, Any], now: float) -> Any:
    results = find(obj, column.get("jsonPath", ""))
    if not results or results[0] is None:
        return None
    value = results[0]
    ctype = column.get("type", "string")
    if ctype == "date" and isinstance(value, str):
        try:
            stamp = calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            return None
        return human_duration(now - stamp)
    if ctype == "string":
        return value if isinstance(value, str) else str(value)
    return value


def to_table(
    rtype: ResourceType, version: str, objects: list[dict[str, Any]], list_meta: dict[str, Any]
) -> dict[str, Any]:
    columns = _columns(rtype, version)
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": _NAME_DESCRIPTION,
            "priority": 0,
        }
    ] + [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    now = time.time()
    rows = [
        {
            "cells": [obj["metadata"]["name"]] + [_cell(c, obj, now) for c in columns],
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
