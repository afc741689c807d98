"""Object metadata rules shared by the backends: what the API server owns and checks.

The embedded store applies these itself; the Kubernetes backend relies on the real API
server but reuses the constants and the error texts, so both backends fail the same way.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import orjson

from actions import timefmt
from actions.kube_names import is_dns_subdomain, is_label_value, is_qualified_name_part
from actions.store.base import KubeObject
from actions.store.errors import Invalid, TooLarge

GROUP = "flyte.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TaskAction"
PLURAL = "taskactions"
RESOURCE = f"{PLURAL}.{GROUP}"
# Traces are kept in a kind of their own (k8s/crd.yaml), beside the TaskActions.
TRACE_KIND = "TraceAction"
TRACE_PLURAL = "actiontraces"
PLURALS: Final = {KIND: PLURAL, TRACE_KIND: TRACE_PLURAL}
_TRACE_BODY_KIND: Final = f'"kind":"{TRACE_KIND}"'


def is_trace_entry(body: str) -> bool:
    """A stored compact-JSON body (``dumps``) is a TraceAction's."""
    return _TRACE_BODY_KIND in body


FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"

# The largest object (compact JSON, UTF-8) a store keeps: etcd's default --max-request-bytes,
# 1.5 MiB. A Kubernetes API server cannot store more (a larger write fails with a 500
# "etcdserver: request is too large", above 2 MiB with the etcd client's "trying to send
# message larger than max"; a request body over 3 MiB is refused with 413 before that), so
# the embedded store refuses more on create, update_status and patch_annotations too, and
# both backends turn the same actions away. (etcd counts its key and a few bytes of
# framing as well, so a real cluster refuses objects a little below this.)
MAX_OBJECT_BYTES: Final = 3 * 512 * 1024


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 text. Strict where the API server is: keys must be strings,
    integers fit 64 bits (TypeError otherwise)."""
    return orjson.dumps(obj).decode()


def loads(body: str | bytes) -> Any:
    return orjson.loads(body)


def copy_json(obj: Any) -> Any:
    """A deep copy that also proves the value is plain JSON (what the API server stores)."""
    return orjson.loads(orjson.dumps(obj))


def object_size(obj: Any) -> int:
    """The object's size as stored: its compact JSON in UTF-8, in bytes."""
    return len(dumps(obj).encode())


def check_size(obj: KubeObject) -> None:
    """Raise TooLarge when ``obj`` is over ``MAX_OBJECT_BYTES`` (see there)."""
    check_body_size(obj, dumps(obj))


def check_body_size(obj: KubeObject, body: str) -> None:
    """``check_size`` for an object already encoded (``body`` is ``dumps(obj)``)."""
    size = len(body) if body.isascii() else len(body.encode())
    if size > MAX_OBJECT_BYTES:
        name = (obj.get("metadata") or {}).get("name", "")
        raise TooLarge(
            f'{RESOURCE} "{name}" is too large to store: {size} bytes, '
            f"the limit is {MAX_OBJECT_BYTES}",
            size=size,
            limit=MAX_OBJECT_BYTES,
        )


def now_timestamp() -> str:
    """RFC 3339, UTC, whole seconds: the API server's metadata timestamp format."""
    return timefmt.now_seconds()


def not_found_message(name: str) -> str:
    return f'{RESOURCE} "{name}" not found'


def already_exists_message(name: str, *, being_deleted: bool = False) -> str:
    prefix = "object is being deleted: " if being_deleted else ""
    return f'{prefix}{RESOURCE} "{name}" already exists'


def conflict_message(name: str) -> str:
    return (
        f'Operation cannot be fulfilled on {RESOURCE} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )


def _check_qualified_name(key: str, what: str) -> None:
    problem = _qualified_name_problem(key)
    if problem:
        raise Invalid(f"{what} {key!r}: {problem}")


# Every object carries the same few label and annotation keys: each is checked once.
@functools.lru_cache(maxsize=256)
def _qualified_name_problem(key: str) -> str:
    prefix, sep, name = key.rpartition("/")
    if sep and not (prefix and is_dns_subdomain(prefix)):
        return "prefix must be a DNS-1123 subdomain"
    if not is_qualified_name_part(name):
        return "name part must be a qualified name of at most 63 chars"
    return ""


def validate_labels(labels: Any) -> None:
    if not isinstance(labels, dict):
        raise Invalid("metadata.labels must be a map of strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise Invalid("metadata.labels must be a map of strings")
        _check_qualified_name(key, "label key")
        if not is_label_value(value):
            raise Invalid(f"label value {value!r} of {key!r} is not a valid label value")


def validate_annotations(annotations: Any) -> None:
    if not isinstance(annotations, dict):
        raise Invalid("metadata.annotations must be a map of strings")
    for key, value in annotations.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise Invalid("metadata.annotations must be a map of strings")
        _check_qualified_name(key, "annotation key")


def validate_owner_references(refs: Any) -> None:
    if not isinstance(refs, list):
        raise Invalid("metadata.ownerReferences must be a list")
    controllers = 0
    for ref in refs:
        if not isinstance(ref, dict):
            raise Invalid("metadata.ownerReferences entries must be objects")
        for field in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref.get(field), str) or not ref[field]:
                raise Invalid(f"metadata.ownerReferences.{field}: Required value")
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        raise Invalid("metadata.ownerReferences: Only one reference can have Controller set")


def validate_new_object(obj: KubeObject, namespace: str) -> None:
    """The checks the API server runs on a create body (sections 2.1, 2.2, 2.7, 2.9).

    The embedded store runs them so that code that works on it does not fail later
    against a real cluster.
    """
    if not isinstance(obj, dict):
        raise Invalid("object must be a mapping")
    if obj.get("kind") not in PLURALS:
        raise Invalid(f"kind must be one of {', '.join(PLURALS)}, got {obj.get('kind')!r}")
    if obj.get("apiVersion") != API_VERSION:
        raise Invalid(f"apiVersion must be {API_VERSION!r}, got {obj.get('apiVersion')!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise Invalid("metadata is required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid("metadata.name: Required value: name or generateName is required")
    if not is_dns_subdomain(name):
        raise Invalid(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 subdomain")
    if meta.get("namespace") not in (None, "", namespace):
        raise Invalid(
            f"the namespace of the object ({meta['namespace']}) does not match the "
            f"namespace of the store ({namespace})"
        )
    if meta.get("resourceVersion"):
        # Upstream answers 500 here; code that re-creates a fetched dict must strip it.
        raise Invalid("resourceVersion should not be set on objects to be created")
    validate_labels(meta.get("labels") or {})
    validate_annotations(meta.get("annotations") or {})
    validate_owner_references(meta.get("ownerReferences") or [])
    finalizers = meta.get("finalizers") or []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        raise Invalid("metadata.finalizers must be a list of strings")


def label_selector(labels: dict[str, str]) -> str:
    """Equality-only label selector text, as the API server parses it."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
