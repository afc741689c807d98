"""The embedded store's writes, as the API server and its garbage collector apply them.

Each function runs inside one SQLite write transaction (``_sqlite.Tx``) in a worker thread,
so a write and its whole cascade are atomic and take consecutive resourceVersions.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

from actions.store import _meta
from actions.store._index import Tx
from actions.store._meta import copy_json
from actions.store.base import KubeObject, PropagationPolicy
from actions.store.errors import AlreadyExists, Conflict, Invalid, NotFound, OwnerTerminating

_ABSENT: Any = object()

# Metadata fields the server owns; whatever a create body says about them is dropped.
_SERVER_OWNED = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)


def create(tx: Tx, obj: KubeObject, namespace: str) -> KubeObject:
    entry, _ = tx.insert_copy(_new_object(tx, obj, namespace))
    return entry.object()


def create_with_status(tx: Tx, obj: KubeObject, status: Any, namespace: str) -> KubeObject:
    """``create``, then ``status`` written through the status subresource: two changes
    (ADDED, MODIFIED) in one transaction, so either both happen or neither does."""
    _, added = tx.insert_copy(_new_object(tx, obj, namespace))
    # The MODIFIED state shares all but metadata and status with the ADDED event's object;
    # neither is changed once stored.
    modified = {**added, "metadata": {**added["metadata"]}, "status": copy_json(status)}
    return tx.replace(modified, check_size=True)


def _new_object(tx: Tx, obj: KubeObject, namespace: str) -> KubeObject:
    """What a create of ``obj`` stores, checked against the store: a shallow copy with
    server-owned metadata filled in (``obj`` itself is left as it was)."""
    _meta.validate_new_object(obj, namespace)
    new: KubeObject = {key: value for key, value in obj.items() if key != "status"}
    meta: dict[str, Any] = dict(new["metadata"])
    new["metadata"] = meta
    name = meta["name"]
    existing = tx.entry(name)
    if existing is not None:
        raise AlreadyExists(_meta.already_exists_message(name, being_deleted=existing.deleting))
    for ref in meta.get("ownerReferences") or []:
        owner = tx.entry(ref["name"])
        # A reference to a missing owner, or to an older object of the same name (uid
        # differs), is dangling: the GC would collect the new object at once. The service
        # wants to hear about it instead, so refuse.
        if owner is None or owner.uid != ref["uid"]:
            raise NotFound(f"owner {_meta.not_found_message(ref['name'])}")
        if owner.deleting:
            raise OwnerTerminating(f'owner {_meta.RESOURCE} "{ref["name"]}" is being deleted')
    for field in _SERVER_OWNED:
        meta.pop(field, None)
    meta.update(
        namespace=namespace,
        uid=str(uuid.uuid4()),
        generation=1,
        creationTimestamp=_meta.now_timestamp(),
    )
    return new


def update_status(tx: Tx, obj: KubeObject, namespace: str) -> KubeObject:
    """PUT on /status: only ``status`` is taken from ``obj``; no ``status`` key removes it."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid("metadata.name: Required value")
    if meta.get("namespace") not in (None, "", namespace):
        raise Invalid(f"the namespace of the object ({meta['namespace']}) does not match")
    expected_rv = meta.get("resourceVersion")
    if not expected_rv:
        raise Invalid("metadata.resourceVersion: Invalid value: 0: must be specified for an update")
    entry = tx.entry(name)
    if entry is None:
        raise NotFound(_meta.not_found_message(name))
    if str(expected_rv) != str(entry.rv):
        raise Conflict(_meta.conflict_message(name))
    new = entry.object()  # a fresh copy: ours to change
    before = new.pop("status", _ABSENT)
    after = copy_json(obj["status"]) if "status" in obj else _ABSENT
    if after == before:
        if before is not _ABSENT:
            new["status"] = before
        return new  # a no-op write is not persisted: old rv, no event
    if after is not _ABSENT:
        new["status"] = after
    return tx.replace(new, check_size=True)


def patch_annotations(tx: Tx, name: str, annotations: dict[str, str]) -> KubeObject:
    _meta.validate_annotations(annotations)
    current = tx.load(name)
    if current is None:
        raise NotFound(_meta.not_found_message(name))
    before = current["metadata"].get("annotations") or {}
    merged = {**before, **annotations}
    if merged == before:
        return current  # a no-op write is not persisted: old rv, no event
    current["metadata"]["annotations"] = merged
    return tx.replace(current, check_size=True)


def delete(tx: Tx, name: str, propagation: PropagationPolicy) -> None:
    """Delete and collect dependents as the API server plus its GC would, in one step.

    Event order (documented contract of the embedded store):
    - Background: the object's DELETED first, then its dependents level by level (parents
      before children), as the asynchronous GC does in a cluster.
    - Foreground: the object's MODIFIED (deletionTimestamp, ``foregroundDeletion``), then
      the dependents bottom-up (children before parents), the object's DELETED last.
    - Orphan: the object's MODIFIED (``orphan``), each dependent's MODIFIED with the
      reference removed, the object's DELETED.
    A dependent with another live owner is not deleted; the dangling reference is stripped
    from it instead (MODIFIED), as the GC does.
    """
    if propagation not in ("Background", "Foreground", "Orphan"):
        raise Invalid(f"propagationPolicy: Unsupported value: {propagation!r}")
    current = tx.load(name)
    if current is None:
        raise NotFound(_meta.not_found_message(name))
    if propagation == "Background":
        tx.remove(current)
        _collect(tx, current, remove_now=True)
        return
    finalizer = (
        _meta.FOREGROUND_FINALIZER if propagation == "Foreground" else _meta.ORPHAN_FINALIZER
    )
    marked = _mark_deleting(tx, current, finalizer)
    if propagation == "Foreground":
        for dependent in reversed(_collect(tx, marked, remove_now=False)):
            tx.remove(dependent)
    else:
        uid = marked["metadata"]["uid"]
        for dependent_name in tx.dependents(name, uid):
            orphan = tx.load(dependent_name)
            if orphan is not None:
                _strip_refs(tx, orphan, lambda ref, uid=uid: ref["uid"] == uid)
    tx.remove(marked)


def _mark_deleting(tx: Tx, current: KubeObject, finalizer: str) -> KubeObject:
    marked = copy_json(current)
    meta = marked["metadata"]
    meta["deletionTimestamp"] = _meta.now_timestamp()
    meta["deletionGracePeriodSeconds"] = 0
    meta["finalizers"] = [*(meta.get("finalizers") or []), finalizer]
    meta["generation"] = meta.get("generation", 1) + 1
    return tx.replace(marked)


def _collect(tx: Tx, root: KubeObject, *, remove_now: bool) -> list[KubeObject]:
    """Breadth-first over the ownerReference index from ``root``: every dependent whose
    owners are all gone (or doomed) is doomed too. Returns the doomed dependents in BFS
    order (each after its owner); removes them at once when ``remove_now``."""
    doomed: dict[str, str] = {root["metadata"]["name"]: root["metadata"]["uid"]}
    order: list[KubeObject] = []
    queue: deque[KubeObject] = deque([root])

    def dangling(ref: dict[str, Any]) -> bool:
        if doomed.get(ref["name"]) == ref["uid"]:
            return True
        owner = tx.load(ref["name"])
        return owner is None or owner["metadata"]["uid"] != ref["uid"]

    while queue:
        owner = queue.popleft()
        for dependent_name in tx.dependents(owner["metadata"]["name"], owner["metadata"]["uid"]):
            if dependent_name in doomed:
                continue
            dependent = tx.load(dependent_name)
            if dependent is None:
                continue
            refs = dependent["metadata"].get("ownerReferences") or []
            if all(dangling(ref) for ref in refs):
                doomed[dependent_name] = dependent["metadata"]["uid"]
                order.append(dependent)
                queue.append(dependent)
                if remove_now:
                    tx.remove(dependent)
            else:
                _strip_refs(tx, dependent, dangling)
    return order


def _strip_refs(tx: Tx, dependent: KubeObject, drop: Any) -> None:
    refs = dependent["metadata"].get("ownerReferences") or []
    kept = [ref for ref in refs if not drop(ref)]
    if len(kept) == len(refs):
        return
    new = copy_json(dependent)
    if kept:
        new["metadata"]["ownerReferences"] = kept
    else:
        new["metadata"].pop("ownerReferences", None)
    tx.replace(new)
