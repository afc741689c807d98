"""The object store: one resourceVersion counter, write semantics, and the event history.

Everything here runs under one re-entrant lock. Stored dicts are never mutated after they are
stored (every write builds a new dict), so readers may serialise them outside the lock.
Watchers and the garbage collector wait on :attr:`ObjectStore.changed` and read
:meth:`ObjectStore.events_after`; the history is a bounded list, and anything older than
``compacted_rv`` answers 410 Expired.
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import errors, schema
from .deleteoptions import FOREGROUND, ORPHAN, DeleteOptions
from .errors import StatusError
from .objects import (
    deep,
    finalizers,
    is_deleting,
    meta,
    name_suffix,
    new_uid,
    non_metadata,
    owner_refs,
    rfc3339,
    with_rv,
    without_rv,
)
from .patching import apply_patch
from .resources import CRDS, NAMESPACES, Registry, ResourceType, crd_errors, resource_type_from_crd
from .selectors import FieldSelector, LabelSelector
from .validation import forbid_new_finalizers, validate_metadata

ObjKey = tuple[str, str]  # (namespace or "", name)
TypeKey = tuple[str, str]  # (group, plural)


@dataclass
class WriteOptions:
    """Per-request write options: ``dryRun=All`` and ``fieldValidation``.

    ``warnings`` collects the texts the HTTP layer sends as ``Warning: 299`` headers.
    """

    dry_run: bool = False
    field_validation: str = "Ignore"  # Ignore | Warn | Strict
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rkey: TypeKey
    obj: dict[str, Any]  # as stored by the write; DELETED: last state with the new RV
    prev: dict[str, Any] | None  # state before the write; None for ADDED


def _token(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_token(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError):
        raise errors.bad_request(f"invalid continue token: {token}") from None


def parse_rv(value: str) -> int:
    if not value.isdigit():
        raise errors.invalid_resource_version_param(value)
    return int(value)


class ObjectStore:
    def __init__(
        self,
        registry: Registry,
        *,
        history_size: int = 10_000,
        too_large_rv_wait: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.history_size = history_size
        self.too_large_rv_wait = too_large_rv_wait
        self.clock = clock
        self.closed = False
        self._rv = 0
        self._compacted_rv = 0
        self._events: list[Event] = []
        self._objects: dict[TypeKey, dict[ObjKey, dict[str, Any]]] = {}
        self._uids: dict[str, tuple[TypeKey, ObjKey]] = {}
        self._dependents: dict[str, set[tuple[TypeKey, ObjKey]]] = {}

    # --- basics -------------------------------------------------------------------------

    @property
    def rv(self) -> int:
        return self._rv

    @property
    def compacted_rv(self) -> int:
        return self._compacted_rv

    def _bucket(self, rtype: ResourceType) -> dict[ObjKey, dict[str, Any]]:
        return self._objects.setdefault(rtype.key, {})

    def _okey(self, rtype: ResourceType, namespace: str | None, name: str) -> ObjKey:
        return (namespace or "" if rtype.namespaced else "", name)

    def kick(self) -> None:
        """Wake every waiter (watchers, GC) without a write: bookmarks, stop, fault knobs."""
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def object_count(self) -> dict[str, int]:
        with self.lock:
            return {f"{k[1]}.{k[0]}" if k[0] else k[1]: len(v) for k, v in self._objects.items()}

    # --- history ----------------------------------------------------------------------

    def _record(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) > self.history_size:
            # Trim in batches so appends stay amortised O(1).
            drop = max(len(self._events) - self.history_size, self.history_size // 4 or 1)
            drop = min(drop, len(self._events))
            self._compacted_rv = self._events[drop - 1].rv
            del self._events[:drop]
        self.changed.notify_all()

    def compact(self) -> int:
        """Forget all history: every older resourceVersion now answers 410."""
        with self.changed:
            self._events.clear()
            self._compacted_rv = self._rv
            self.changed.notify_all()
            return self._rv

    def events_after(self, rv: int) -> list[Event]:
        """Events with RV > ``rv``; raises 410 Expired when some were dropped already."""
        if rv < self._compacted_rv:
            raise errors.too_old_resource_version(rv, self._compacted_rv + 1)
        index = bisect.bisect_right(self._events, rv, key=lambda e: e.rv)
        return self._events[index:]

    def wait_for_rv(self, rv: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self._rv < rv and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return self._rv >= rv

    # --- persistence primitives (lock held) -----------------------------------------------

    def _persist(
        self, rtype: ResourceType, okey: ObjKey, new: dict[str, Any], prev: dict[str, Any] | None
    ) -> dict[str, Any]:
        self._rv += 1
        new = with_rv(new, self._rv)
        self._bucket(rtype)[okey] = new
        self._reindex(rtype, okey, prev, new)
        if rtype is CRDS or rtype.key == CRDS.key:
            self.registry.add(resource_type_from_crd(new))
        self._record(Event(self._rv, "ADDED" if prev is None else "MODIFIED", rtype.key, new, prev))
        return new

    def _remove(self, rtype: ResourceType, okey: ObjKey, prev: dict[str, Any]) -> dict[str, Any]:
        if rtype.key == CRDS.key:
            self._drop_custom_resources(prev)
        self._rv += 1
        gone = with_rv(prev, self._rv)
        del self._bucket(rtype)[okey]
        self._reindex(rtype, okey, prev, None)
        self._record(Event(self._rv, "DELETED", rtype.key, gone, prev))
        return gone

    def _drop_custom_resources(self, crd: dict[str, Any]) -> None:
        # The real server's CRD finalizer deletes every instance before the CRD goes away.
        served = self.registry.get(*_crd_type_key(crd))
        if served is None:
            return
        for okey, obj in sorted(self._bucket(served).items()):
            self._remove(served, okey, obj)
        self.registry.remove(served.key)
        self._objects.pop(served.key, None)

    def _reindex(
        self,
        rtype: ResourceType,
        okey: ObjKey,
        prev: dict[str, Any] | None,
        new: dict[str, Any] | None,
    ) -> None:
        ident = (rtype.key, okey)
        if prev is not None:
            self._uids.pop(meta(prev).get("uid", ""), None)
            for ref in owner_refs(prev):
                deps = self._dependents.get(ref.get("uid", ""))
                if deps is not None:
                    deps.discard(ident)
                    if not deps:
                        del self._dependents[ref.get("uid", "")]
        if new is not None:
            self._uids[meta(new)["uid"]] = ident
            for ref in owner_refs(new):
                self._dependents.setdefault(ref.get("uid", ""), set()).add(ident)

    # --- lookups (lock held or not: values are immutable) ---------------------------------

    def get_by_uid(self, uid: str) -> tuple[ResourceType, dict[str, Any]] | None:
        with self.lock:
            found = self._uids.get(uid)
            if not found:
                return None
            rtype = self.registry.get(*found[0])
            obj = self._objects.get(found[0], {}).get(found[1])
            if rtype is None or obj is None:
                return None
            return rtype, obj

    def dependents_of(self, uid: str) -> list[tuple[ResourceType, dict[str, Any]]]:
        with self.lock:
            out = []
            for tkey, okey in sorted(self._dependents.get(uid, ())):
                rtype = self.registry.get(*tkey)
                obj = self._objects.get(tkey, {}).get(okey)
                if rtype is not None and obj is not None:
                    out.append((rtype, obj))
            return out

    def lookup(
        self, rtype: ResourceType, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        with self.lock:
            return self._bucket(rtype).get(self._okey(rtype, namespace, name))

    def items(self, rtype: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            bucket = self._bucket(rtype)
            keys = sorted(bucket)
            if namespace is not None and rtype.namespaced:
                keys = [k for k in keys if k[0] == namespace]
            return [bucket[k] for k in keys]

    # --- checks shared by writes ------------------------------------------------------------

    def _check_type_meta(self, rtype: ResourceType, body: Any, version: str) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request(
                "the object provided is unrecognized (must be of type " + rtype.kind + ")"
            )
        if rtype.builtin:
            # Built-in kinds decode without apiVersion/kind (create_namespace sends neither).
            api_version = body.get("apiVersion")
            kind = body.get("kind")
            if api_version and api_version not in [rtype.api_version(v) for v in rtype.versions]:
                raise errors.bad_request(
                    f"the API version in the data ({api_version}) does not match the expected "
                    f"API version ({rtype.api_version(version)})"
                )
            if kind and kind != rtype.kind:
                raise errors.bad_request(
                    f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
                )
            return
        if not body.get("kind"):
            raise errors.bad_request(
                f"Object 'Kind' is missing in '{json.dumps(body, separators=(',', ':'))}'"
            )
        if body.get("apiVersion") != rtype.api_version(version):
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion', '')}) does not match "
                f"the expected API version ({rtype.api_version(version)})"
            )
        if body["kind"] != rtype.kind:
            raise _invalid(
                rtype,
                meta(body).get("name", ""),
                [errors.invalid("kind", body["kind"], f"must be {rtype.kind}")],
            )

    def _check_namespace_for_create(self, rtype: ResourceType, namespace: str, name: str) -> None:
        ns = self._bucket(NAMESPACES).get(("", namespace))
        if ns is None:
            raise errors.namespace_not_found(namespace)
        if is_deleting(ns) or (ns.get("status") or {}).get("phase") == "Terminating":
            raise errors.namespace_terminating(
                rtype.qualified, rtype.group, rtype.plural, name, namespace
            )

    def _validate(
        self, rtype: ResourceType, obj: dict[str, Any], version: str, opts: WriteOptions
    ) -> dict[str, Any]:
        """Metadata rules plus, for custom kinds, the CRD's structural schema."""
        errs = validate_metadata(
            meta(obj), namespaced=rtype.namespaced, name_is_label=rtype is NAMESPACES
        )
        if not rtype.builtin:
            obj, schema_errs, dropped = schema.process_custom_object(
                obj, rtype.schemas.get(version)
            )
            errs += schema_errs
            unknown = [f'unknown field "{path}"' for path in dropped]
            if unknown and opts.field_validation == "Strict":
                raise errors.bad_request("strict decoding error: " + ", ".join(unknown))
            if opts.field_validation == "Warn":
                opts.warnings.extend(unknown)
        elif rtype.key == CRDS.key:
            errs += [
                errors.FieldError("FieldValueInvalid", p.split(":")[0], None, p)
                for p in crd_errors(obj)
            ]
        if errs:
            raise _invalid(rtype, meta(obj).get("name", ""), errs)
        return obj

    def _check_url_identity(
        self, rtype: ResourceType, namespace: str | None, name: str, body: dict[str, Any]
    ) -> None:
        body_meta = meta(body)
        if body_meta.get("name") and body_meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({body_meta['name']}) does not match the name on "
                f"the URL ({name})"
            )
        if rtype.namespaced and body_meta.get("namespace") and body_meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )

    # --- create -------------------------------------------------------------------------

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        version: str | None = None,
        opts: WriteOptions | None = None,
    ) -> dict[str, Any]:
        opts = opts or WriteOptions()
        version = version or rtype.storage_version
        self._check_type_meta(rtype, body, version)
        obj = deep(body)
        obj["apiVersion"] = rtype.api_version()
        obj["kind"] = rtype.kind
        md = obj.setdefault("metadata", {})
        if not isinstance(md, dict):
            raise errors.bad_request("metadata must be an object")
        if md.get("resourceVersion"):
            raise errors.resource_version_on_create()
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + name_suffix()
        if rtype.namespaced:
            if md.get("namespace") and md["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            md["namespace"] = namespace
        else:
            md.pop("namespace", None)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            md.pop(key, None)
        md["uid"] = new_uid()
        md["creationTimestamp"] = rfc3339(self.clock())
        md["generation"] = 1
        with self.lock:
            if rtype.namespaced:
                self._check_namespace_for_create(rtype, namespace or "", md.get("name", ""))
            self._init_builtin(rtype, obj)
            obj = self._validate(rtype, obj, version, opts)
            okey = self._okey(rtype, namespace, obj["metadata"]["name"])
            existing = self._bucket(rtype).get(okey)
            if existing is not None:
                raise errors.already_exists(
                    rtype.qualified,
                    rtype.group,
                    rtype.plural,
                    okey[1],
                    being_deleted=is_deleting(existing),
                )
            if rtype.key == CRDS.key:
                self._check_crd_conflict(obj)
            if opts.dry_run:
                return obj
            _check_storable(obj)
            return self._persist(rtype, okey, obj, None)

    def _init_builtin(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype is NAMESPACES:
            name = obj["metadata"].get("name", "")
            obj["metadata"].setdefault("labels", {})
            if name:
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif rtype.key == CRDS.key:
            obj["status"] = _crd_status(obj, self.clock())
        elif rtype.status_subresource:
            obj.pop("status", None)

    def _check_crd_conflict(self, crd: dict[str, Any]) -> None:
        existing = self.registry.get(*_crd_type_key(crd))
        if existing is not None and existing.builtin:
            raise errors.bad_request("cannot redefine a built-in resource")

    # --- get / list -----------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.lookup(rtype, namespace, name)
        if obj is None:
            raise errors.not_found(rtype.qualified, rtype.group, rtype.plural, name)
        return obj

    def _state_at(self, rtype: ResourceType, rv: int) -> dict[ObjKey, dict[str, Any]]:
        """The objects of one kind as they were right after write ``rv``."""
        if rv < self._compacted_rv:
            raise errors.too_old_resource_version(rv, self._compacted_rv + 1)
        state = dict(self._bucket(rtype))
        for event in reversed(self.events_after(rv)):
            if event.rkey != rtype.key:
                continue
            okey = self._okey(rtype, meta(event.obj).get("namespace"), meta(event.obj)["name"])
            if event.prev is None:
                state.pop(okey, None)
            else:
                state[okey] = event.prev
        return state

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector,
        fields: FieldSelector,
        resource_version: str | None = None,
        rv_match: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> dict[str, Any]:
        if rv_match and not resource_version:
            raise errors.invalid_list_options(
                errors.forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            )
        if rv_match and rv_match not in ("Exact", "NotOlderThan"):
            raise errors.invalid_list_options(
                errors.not_supported("resourceVersionMatch", rv_match, ["Exact", "NotOlderThan"])
            )
        start = ""
        snapshot: int | None = None
        if continue_token:
            snapshot, start = _parse_token(continue_token)
        elif resource_version and resource_version != "0":
            wanted = parse_rv(resource_version)
            if rv_match == "Exact":
                snapshot = wanted
            elif wanted > self._rv and not self.wait_for_rv(wanted, self.too_large_rv_wait):
                raise errors.rv_too_large(wanted, self._rv)
        elif resource_version:
            parse_rv(resource_version)
        with self.lock:
            if snapshot is not None and snapshot > self._rv:
                raise errors.rv_too_large(snapshot, self._rv)
            if snapshot is None or snapshot == self._rv:
                list_rv = self._rv
                state = self._bucket(rtype)
            else:
                list_rv = snapshot
                try:
                    state = self._state_at(rtype, snapshot)
                except StatusError as exc:
                    if continue_token:
                        # Upstream offers a token that continues from the latest state.
                        raise errors.expired(
                            "The provided continue parameter is too old to display a consistent "
                            "list result. You can start a new list without the continue "
                            "parameter, or use the continue token in this response to retrieve "
                            "the remainder of the results. Continuing with the provided token "
                            "results in an inconsistent list - objects that were created, "
                            "modified, or deleted between the time the first chunk was returned "
                            "and now may show up in the list.",
                            _token(self._rv, start),
                        ) from None
                    raise exc
            keys = sorted(state)
            if namespace is not None and rtype.namespaced:
                keys = [k for k in keys if k[0] == namespace]
            if start:
                # NUL sorts below every name character, so this agrees with tuple order.
                keys = [k for k in keys if "\x00".join(k) > start]
            items: list[dict[str, Any]] = []
            more = False
            remaining = 0
            for i, okey in enumerate(keys):
                obj = state[okey]
                if not (labels.matches(meta(obj).get("labels")) and fields.matches(obj)):
                    continue
                if limit and len(items) == limit:
                    more = True
                    remaining = len(keys) - i
                    break
                items.append(obj)
        list_meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if more:
            last = items[-1]["metadata"]
            list_meta["continue"] = _token(
                list_rv, "\x00".join(self._okey(rtype, last.get("namespace"), last["name"]))
            )
            if labels.empty and not fields.terms:
                list_meta["remainingItemCount"] = remaining
        return {
            "apiVersion": rtype.api_version(),
            "kind": rtype.list_kind_name,
            "metadata": list_meta,
            "items": items,
        }

    # --- update / patch -----------------------------------------------------------------------

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        version: str | None = None,
        opts: WriteOptions | None = None,
    ) -> dict[str, Any]:
        opts = opts or WriteOptions()
        version = version or rtype.storage_version
        self._check_type_meta(rtype, body, version)
        self._check_url_identity(rtype, namespace, name, body)
        with self.lock:
            current = self.get(rtype, namespace, name)
            sent_rv = meta(body).get("resourceVersion")
            if not sent_rv:
                raise _invalid(
                    rtype,
                    name,
                    [
                        errors.invalid(
                            "metadata.resourceVersion", 0, "must be specified for an update"
                        )
                    ],
                )
            return self._replace(rtype, current, body, sent_rv, subresource, version, opts)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch_body: Any,
        *,
        subresource: str | None = None,
        version: str | None = None,
        opts: WriteOptions | None = None,
    ) -> dict[str, Any]:
        opts = opts or WriteOptions()
        version = version or rtype.storage_version
        with self.lock:
            current = self.get(rtype, namespace, name)
            presented = current
            if version != rtype.storage_version:
                presented = dict(current, apiVersion=rtype.api_version(version))
            patched = apply_patch(presented, content_type, patch_body, builtin=rtype.builtin)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patched object is not a JSON object")
            self._check_type_meta(rtype, patched, version)
            self._check_url_identity(rtype, namespace, name, patched)
            # Without a resourceVersion in the patch the write applies to the latest object.
            sent_rv = meta(patched).get("resourceVersion") or meta(current)["resourceVersion"]
            return self._replace(rtype, current, patched, sent_rv, subresource, version, opts)

    def _replace(
        self,
        rtype: ResourceType,
        current: dict[str, Any],
        body: dict[str, Any],
        sent_rv: str,
        subresource: str | None,
        version: str,
        opts: WriteOptions,
    ) -> dict[str, Any]:
        cur_meta = meta(current)
        name = cur_meta["name"]
        if sent_rv != cur_meta["resourceVersion"]:
            raise errors.conflict(
                rtype.qualified, rtype.group, rtype.plural, name, errors.CONFLICT_MODIFIED
            )
        if subresource == "status":
            new = deep(current)
            if "status" in body:
                new["status"] = deep(body["status"])
            else:
                new.pop("status", None)
        else:
            new = self._merge_server_fields(rtype, current, body)
        new["apiVersion"] = rtype.api_version()
        new["kind"] = rtype.kind
        new = self._validate(rtype, new, version, opts)
        if rtype.key == CRDS.key and subresource != "status":
            new["status"] = _crd_status(new, self.clock(), current.get("status"))
        if is_deleting(current):
            errs = forbid_new_finalizers(finalizers(current), finalizers(new))
            if errs:
                raise _invalid(rtype, name, errs)
        skip_status = rtype.status_subresource
        if non_metadata(new, skip_status=skip_status) != non_metadata(
            current, skip_status=skip_status
        ):
            new["metadata"]["generation"] = cur_meta.get("generation", 1) + 1
        if without_rv(new) == without_rv(current):
            return current  # no-op: no new RV, no event
        okey = self._okey(rtype, cur_meta.get("namespace"), name)
        if opts.dry_run:
            return new
        if is_deleting(current) and not finalizers(new) and not _namespace_pending(rtype, new):
            gone = self._remove(rtype, okey, current)
            return with_rv(new, int(gone["metadata"]["resourceVersion"]))
        _check_storable(new)
        return self._persist(rtype, okey, new, current)

    def _merge_server_fields(
        self, rtype: ResourceType, current: dict[str, Any], body: dict[str, Any]
    ) -> dict[str, Any]:
        """Main-resource write: keep what the server owns."""
        new = deep(body)
        md = new.setdefault("metadata", {})
        cur_meta = meta(current)
        name = cur_meta["name"]
        if md.get("uid") and md["uid"] != cur_meta["uid"]:
            raise _invalid(
                rtype, name, [errors.invalid("metadata.uid", md["uid"], "field is immutable")]
            )
        md["uid"] = cur_meta["uid"]
        md["name"] = name
        if rtype.namespaced:
            md["namespace"] = cur_meta["namespace"]
        md["creationTimestamp"] = cur_meta["creationTimestamp"]
        md["generation"] = cur_meta.get("generation", 1)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in cur_meta:
                md[key] = cur_meta[key]
            else:
                md.pop(key, None)
        md.pop("managedFields", None)
        md.pop("selfLink", None)
        if rtype.status_subresource:
            if "status" in current:
                new["status"] = deep(current["status"])
            else:
                new.pop("status", None)
        if rtype is NAMESPACES:
            # spec.finalizers only changes through /finalize; the name label is enforced.
            new["spec"] = deep(current.get("spec") or {})
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        return new

    # --- delete ---------------------------------------------------------------------------

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: DeleteOptions,
    ) -> tuple[int, dict[str, Any]]:
        with self.lock:
            current = self.get(rtype, namespace, name)
            return self._delete_locked(rtype, current, options)

    def _delete_locked(
        self, rtype: ResourceType, current: dict[str, Any], options: DeleteOptions
    ) -> tuple[int, dict[str, Any]]:
        cur_meta = meta(current)
        name = cur_meta["name"]
        if options.precondition_uid and options.precondition_uid != cur_meta["uid"]:
            raise errors.conflict(
                rtype.qualified,
                rtype.group,
                rtype.plural,
                name,
                f"the UID in the precondition ({options.precondition_uid}) does not match the "
                f"UID in record ({cur_meta['uid']}). The object might have been deleted and "
                "then recreated",
            )
        if options.precondition_rv and options.precondition_rv != cur_meta["resourceVersion"]:
            raise errors.conflict(
                rtype.qualified,
                rtype.group,
                rtype.plural,
                name,
                f"the ResourceVersion in the precondition ({options.precondition_rv}) does not "
                f"match the ResourceVersion in record ({cur_meta['resourceVersion']}). The "
                "object might have been modified",
            )
        okey = self._okey(rtype, cur_meta.get("namespace"), name)
        old_fins = finalizers(current)
        new_fins = [f for f in old_fins if f not in (ORPHAN, FOREGROUND)]
        if options.should_orphan(old_fins):
            new_fins.append(ORPHAN)
        if options.should_foreground(old_fins):
            new_fins.append(FOREGROUND)
        ns_pending = rtype is NAMESPACES and (current.get("spec") or {}).get("finalizers")
        code = 202 if options.orphan_dependents is False else 200
        if not new_fins and not ns_pending:
            if options.dry_run:
                return 200, _deleted_status(rtype, current)
            self._remove(rtype, okey, current)
            return 200, _deleted_status(rtype, current)
        new = deep(current)
        new["metadata"]["finalizers"] = new_fins
        if not new_fins:
            new["metadata"].pop("finalizers")
        if not is_deleting(current):
            new["metadata"]["deletionTimestamp"] = rfc3339(self.clock())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = cur_meta.get("generation", 1) + 1
        if rtype is NAMESPACES:
            new.setdefault("status", {})["phase"] = "Terminating"
        if without_rv(new) == without_rv(current) or options.dry_run:
            return code, current if not options.dry_run else new
        return code, self._persist(rtype, okey, new, current)

    def delete_collection(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector,
        fields: FieldSelector,
        options: DeleteOptions,
    ) -> dict[str, Any]:
        with self.lock:
            deleted = []
            for obj in self.items(rtype, namespace):
                if labels.matches(meta(obj).get("labels")) and fields.matches(obj):
                    _code, result = self._delete_locked(rtype, obj, options)
                    deleted.append(result if result.get("kind") != "Status" else obj)
            return {
                "apiVersion": rtype.api_version(),
                "kind": rtype.list_kind_name,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": deleted,
            }

    # --- internal writes for the controllers (lock held by caller) -------------------------

    def controller_update(
        self, rtype: ResourceType, current: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        """Write ``new`` over ``current`` as a controller would (PUT with the current RV)."""
        new = deep(new)
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._replace(
            rtype,
            current,
            new,
            current["metadata"]["resourceVersion"],
            None,
            rtype.storage_version,
            WriteOptions(),
        )

    def controller_delete(
        self, rtype: ResourceType, current: dict[str, Any], policy: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Delete with a uid precondition, as the garbage collector does."""
        options = DeleteOptions(propagation_policy=policy, precondition_uid=meta(current)["uid"])
        return self._delete_locked(rtype, current, options)

    def namespace_remove_finalizers(self, ns_obj: dict[str, Any]) -> None:
        new = deep(ns_obj)
        new.setdefault("spec", {})["finalizers"] = []
        okey = ("", meta(ns_obj)["name"])
        if not finalizers(new):
            self._remove(NAMESPACES, okey, ns_obj)
        else:
            self._persist(NAMESPACES, okey, new, ns_obj)

    def all_objects(self) -> Iterable[tuple[ResourceType, dict[str, Any]]]:
        with self.lock:
            for tkey, bucket in list(self._objects.items()):
                rtype = self.registry.get(*tkey)
                if rtype is None:
                    continue
                for obj in list(bucket.values()):
                    yield rtype, obj


def _crd_type_key(crd: dict[str, Any]) -> TypeKey:
    """(group, plural) of the kind a CustomResourceDefinition serves."""
    spec = crd.get("spec") or {}
    return str(spec.get("group") or ""), str((spec.get("names") or {}).get("plural") or "")


def _check_storable(obj: dict[str, Any]) -> None:
    """What etcd would refuse (dry runs never reach it, so they are not checked)."""
    size = len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())
    if size > errors.ETCD_MAX_REQUEST_BYTES:
        raise errors.object_too_large(size)


def _namespace_pending(rtype: ResourceType, obj: dict[str, Any]) -> bool:
    """A terminating namespace also waits for its spec.finalizers (the namespace controller)."""
    return rtype is NAMESPACES and bool((obj.get("spec") or {}).get("finalizers"))


def _deleted_status(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {"name": meta(obj)["name"]}
    if rtype.group:
        details["group"] = rtype.group
    details["kind"] = rtype.plural
    details["uid"] = meta(obj)["uid"]
    return errors.success_status(details)


def _crd_status(
    crd: dict[str, Any], now: float, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the apiextensions controllers report once a CRD is served."""
    spec = crd.get("spec") or {}
    stamp = rfc3339(now)
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}

    def cond(ctype: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": ctype,
            "status": "True",
            "lastTransitionTime": old.get(ctype, {}).get("lastTransitionTime", stamp),
            "reason": reason,
            "message": message,
        }

    return {
        "acceptedNames": deep(spec.get("names") or {}),
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
    }


def _invalid(rtype: ResourceType, name: str, errs: list[errors.FieldError]) -> StatusError:
    """422 Invalid for an object of ``rtype``."""
    return errors.invalid_object(rtype.group_kind, rtype.plural, rtype.group, name, errs)
