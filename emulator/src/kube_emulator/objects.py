"""Small helpers on Kubernetes-shaped dict objects."""

from __future__ import annotations

import copy
import random
import time
import uuid
from typing import Any, TypeVar

_T = TypeVar("_T")

# apiserver's names.SimpleNameGenerator alphabet: no vowels, no look-alike digits.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def rfc3339(ts: float | None = None) -> str:
    """Whole-second UTC timestamp, as metav1.Time serialises."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def new_uid() -> str:
    return str(uuid.uuid4())


def name_suffix() -> str:
    return "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(5))


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def with_rv(obj: dict[str, Any], rv: int) -> dict[str, Any]:
    """Shallow-copy ``obj`` with a new resourceVersion; stored dicts are never mutated."""
    out = dict(obj)
    out["metadata"] = dict(meta(obj))
    out["metadata"]["resourceVersion"] = str(rv)
    return out


def without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in meta(obj).items() if k != "resourceVersion"}
    return out


def non_metadata(obj: dict[str, Any], *, skip_status: bool) -> dict[str, Any]:
    """Everything whose change bumps ``generation``."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if skip_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def deep(obj: _T) -> _T:
    return copy.deepcopy(obj)


def owner_refs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(meta(obj).get("ownerReferences") or [])


def finalizers(obj: dict[str, Any]) -> list[str]:
    return list(meta(obj).get("finalizers") or [])


def is_deleting(obj: dict[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))
