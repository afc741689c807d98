"""Garbage collector and namespace controller.

Like kube-controller-manager, it runs asynchronously: a thread follows the store's event
history and reacts to what it sees, so a DELETE returns before its cascade is done. Each
event puts the written object, its owners and its dependents on an attention list; items on
the list are then judged against the current state (all under the store lock).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from .deleteoptions import FOREGROUND, ORPHAN
from .errors import StatusError
from .faults import Faults
from .objects import deep, finalizers, is_deleting, meta, owner_refs
from .resources import NAMESPACES, ResourceType
from .store import ObjectStore


class GarbageCollector:
    def __init__(self, store: ObjectStore, faults: Faults) -> None:
        self.store = store
        self.faults = faults
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cursor = 0
        self.idle = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._cursor = self.store.rv
        self._resync_needed = True
        self._thread = threading.Thread(target=self._loop, name="kube-emulator-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.store.kick()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping and not self.store.closed:
            with self.store.changed:
                if self.store.rv == self._cursor and not self._resync_needed:
                    self.idle.set()
                    self.store.changed.wait(0.5)
                    continue
            self.idle.clear()
            if self.faults.gc_paused:
                time.sleep(0.05)
                continue
            if self.faults.gc_delay:
                time.sleep(self.faults.gc_delay)
            try:
                self.run_once()
            except Exception:  # keep collecting; a bug here must not kill the thread
                import traceback

                traceback.print_exc()
                time.sleep(0.1)

    # --- one pass ------------------------------------------------------------------------

    def run_once(self) -> None:
        with self.store.lock:
            attention: dict[str, None] = {}
            target = self.store.rv
            try:
                events = self.store.events_after(self._cursor)
            except StatusError:
                events = None
            if events is None or self._resync_needed:
                # Lost track (compaction) or first start: look at everything once.
                self._resync_needed = False
                for _rtype, obj in self.store.all_objects():
                    attention[meta(obj)["uid"]] = None
                    for ref in owner_refs(obj):
                        attention[ref.get("uid", "")] = None
            else:
                for event in events:
                    self._note(event.obj, attention)
                    if event.prev is not None:
                        self._note(event.prev, attention)
            self._cursor = target
            for uid in attention:
                found = self.store.get_by_uid(uid)
                if found is not None:
                    self._process(*found)

    def _note(self, obj: dict[str, Any], attention: dict[str, None]) -> None:
        uid = meta(obj).get("uid", "")
        attention[uid] = None
        for ref in owner_refs(obj):
            attention[ref.get("uid", "")] = None
        for _rtype, dep in self.store.dependents_of(uid):
            attention[meta(dep)["uid"]] = None
        namespace = meta(obj).get("namespace")
        if namespace:
            # A terminating namespace waits for its contents: re-check it on their changes.
            ns_obj = self.store.lookup(NAMESPACES, None, namespace)
            if ns_obj is not None and is_deleting(ns_obj):
                attention[meta(ns_obj)["uid"]] = None

    def _process(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype is NAMESPACES and is_deleting(obj):
            self._finish_namespace(obj)
            return
        fins = finalizers(obj)
        if is_deleting(obj):
            if ORPHAN in fins:
                self._orphan_dependents(rtype, obj)
            elif FOREGROUND in fins:
                self._process_foreground_owner(rtype, obj)
            return
        if owner_refs(obj):
            self._attempt_to_delete(rtype, obj)

    # --- owner lookups -----------------------------------------------------------------

    def _owner_state(self, dependent: dict[str, Any], ref: dict[str, Any]) -> str:
        """``solid``, ``dangling``, ``waiting`` (foreground-deleting) or ``unknown`` kind."""
        owner_type = self.store.registry.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if owner_type is None:
            return "unknown"
        owner = self.store.lookup(owner_type, meta(dependent).get("namespace"), ref.get("name", ""))
        if owner is None or meta(owner).get("uid") != ref.get("uid"):
            return "dangling"
        if FOREGROUND in finalizers(owner) and is_deleting(owner):
            return "waiting"
        return "solid"

    def _dependents(
        self, rtype: ResourceType, owner: dict[str, Any]
    ) -> Iterator[tuple[ResourceType, dict[str, Any]]]:
        """Dependents in the owner's namespace (cluster-scoped owners: any namespace)."""
        ns = meta(owner).get("namespace")
        for dep_type, dep in self.store.dependents_of(meta(owner)["uid"]):
            if rtype.namespaced and meta(dep).get("namespace") != ns:
                continue
            yield dep_type, dep

    # --- the three jobs -------------------------------------------------------------------

    def _attempt_to_delete(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        refs = owner_refs(obj)
        states = [self._owner_state(obj, ref) for ref in refs]
        if "unknown" in states:
            return  # the real GC keeps retrying an unresolvable owner; never collects
        solid = [r for r, s in zip(refs, states, strict=True) if s == "solid"]
        waiting = [r for r, s in zip(refs, states, strict=True) if s == "waiting"]
        if solid:
            if len(solid) != len(refs):
                # Another owner keeps it alive: drop the references that no longer count.
                new = deep(obj)
                new["metadata"]["ownerReferences"] = solid
                self.store.controller_update(rtype, obj, new)
            return
        if waiting and any(True for _ in self._dependents(rtype, obj)):
            for _dep_type, dep in self._dependents(rtype, obj):
                if is_deleting(dep) and FOREGROUND in finalizers(dep):
                    # Cycle guard: stop our owners from waiting on us.
                    new = deep(obj)
                    for ref in new["metadata"]["ownerReferences"]:
                        if ref.get("blockOwnerDeletion"):
                            ref["blockOwnerDeletion"] = False
                    obj = self.store.controller_update(rtype, obj, new)
                    break
            self._delete(rtype, obj, "Foreground")
            return
        fins = finalizers(obj)
        if ORPHAN in fins:
            policy = "Orphan"
        elif FOREGROUND in fins:
            policy = "Foreground"
        else:
            policy = "Background"
        self._delete(rtype, obj, policy)

    def _delete(self, rtype: ResourceType, obj: dict[str, Any], policy: str) -> None:
        with contextlib.suppress(StatusError):  # uid precondition failed: a newer object
            self.store.controller_delete(rtype, obj, policy)

    def _orphan_dependents(self, rtype: ResourceType, owner: dict[str, Any]) -> None:
        uid = meta(owner)["uid"]
        for dep_type, dep in list(self._dependents(rtype, owner)):
            new = deep(dep)
            kept = [r for r in owner_refs(dep) if r.get("uid") != uid]
            if kept:
                new["metadata"]["ownerReferences"] = kept
            else:
                new["metadata"].pop("ownerReferences", None)
            self.store.controller_update(dep_type, dep, new)
        self._drop_finalizer(rtype, owner, ORPHAN)

    def _process_foreground_owner(self, rtype: ResourceType, owner: dict[str, Any]) -> None:
        uid = meta(owner)["uid"]
        blocking = False
        for dep_type, dep in list(self._dependents(rtype, owner)):
            if not is_deleting(dep):
                self._attempt_to_delete(dep_type, dep)
            current = self.store.lookup(dep_type, meta(dep).get("namespace"), meta(dep)["name"])
            if current is None or meta(current)["uid"] != meta(dep)["uid"]:
                continue
            for ref in owner_refs(current):
                if ref.get("uid") == uid and ref.get("blockOwnerDeletion"):
                    blocking = True
        if not blocking:
            self._drop_finalizer(rtype, owner, FOREGROUND)

    def _drop_finalizer(self, rtype: ResourceType, obj: dict[str, Any], name: str) -> None:
        current = self.store.lookup(rtype, meta(obj).get("namespace"), meta(obj)["name"])
        if current is None or meta(current)["uid"] != meta(obj)["uid"]:
            return
        new = deep(current)
        new["metadata"]["finalizers"] = [f for f in finalizers(current) if f != name]
        self.store.controller_update(rtype, current, new)

    # --- namespace controller ---------------------------------------------------------

    def _finish_namespace(self, ns_obj: dict[str, Any]) -> None:
        name = meta(ns_obj)["name"]
        remaining = False
        for rtype in self.store.registry.all():
            if not rtype.namespaced:
                continue
            for obj in self.store.items(rtype, name):
                remaining = True
                if not is_deleting(obj):
                    self._delete(rtype, obj, "Background")
        if not remaining and (ns_obj.get("spec") or {}).get("finalizers"):
            self.store.namespace_remove_finalizers(ns_obj)
