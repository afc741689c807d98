"""Strategic merge patch for the built-in kinds, without their Go type information.

kubectl's client-side ``apply`` and ``patch`` send strategic merge patches to built-in kinds
(https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/).
A real server knows from the Go types which lists merge by which key; the emulator learns it
from the patch itself and from a short table:

- ``$setElementOrder/<list>`` (kubectl sends it for every merging list it patches) names
  the merge key (each entry is ``{key: value}``) or marks a list of primitives that merges,
  and gives the final order;
- otherwise the well-known merge keys of the built-in kinds (``containers`` by ``name``,
  ``volumeMounts`` by ``mountPath`` ...) apply when the elements carry that key;
- any other list is replaced whole, as for lists without a patch strategy.

Directives: ``$patch: replace|delete|merge`` (maps and list elements),
``$deleteFromPrimitiveList/<list>``, ``$retainKeys``; ``null`` deletes a key.
"""

from __future__ import annotations

import copy
from typing import Any

# Merge keys of the built-in kinds' merging lists (patchMergeKey in the Go types), by the
# list's field name. "ports" merges by containerPort in containers and by port in services.
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "ownerReferences": ("uid",),
    "conditions": ("type",),
    "topologySpreadConstraints": ("topologyKey",),
    "resourceClaims": ("name",),
    "ports": ("containerPort", "port"),
}
# Lists of strings that merge as sets (patchStrategy "merge" without a key).
_PRIMITIVE_MERGE_LISTS = frozenset({"finalizers"})

_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"
_DELETE = object()  # a map that a `$patch: delete` removes


def apply(target: Any, patch: Any) -> Any:
    """``target`` with the strategic merge ``patch`` applied (inputs are not modified)."""
    result = _merge_map(target, patch)
    return {} if result is _DELETE else result


def _merge_map(original: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    base: dict[str, Any] = dict(original) if isinstance(original, dict) else {}
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip(patch)
    result = base
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(
                key,
                result.get(key),
                value,
                patch.get(_ORDER + key),
                patch.get(_DELETE_PRIMITIVES + key),
            )
        elif isinstance(value, dict):
            merged = _merge_map(result.get(key), value)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    # Lists touched only by a directive (reordered, or primitives deleted).
    for key in patch:
        for prefix in (_ORDER, _DELETE_PRIMITIVES):
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if name not in patch and isinstance(result.get(name), list):
                    result[name] = _merge_list(
                        name,
                        result[name],
                        [],
                        patch.get(_ORDER + name),
                        patch.get(_DELETE_PRIMITIVES + name),
                    )
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_key(name: str, items: list[Any], order: Any) -> str | None:
    """The key a list merges by, or None when it is replaced whole (or merges as a set)."""
    if isinstance(order, list) and order and all(isinstance(o, dict) for o in order):
        keys: set[str] = {str(k) for entry in order for k in entry}
        if len(keys) == 1:
            return keys.pop()
    dicts = [i for i in items if isinstance(i, dict) and i.get("$patch") != "replace"]
    for key in _MERGE_KEYS.get(name, ()):
        if dicts and all(key in i for i in dicts):
            return key
    return None


def _merge_list(
    name: str, original: Any, patch: list[Any], order: Any, delete_primitives: Any
) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    current = list(original) if isinstance(original, list) else []
    key = _merge_key(name, patch or current, order)
    if key is not None:
        return _merge_keyed(current, patch, key, order)
    primitives = isinstance(order, list) or delete_primitives is not None
    if primitives or name in _PRIMITIVE_MERGE_LISTS:
        return _merge_primitives(current, patch, order, delete_primitives)
    return [_strip(item) for item in patch]


def _merge_keyed(current: list[Any], patch: list[Any], key: str, order: Any) -> list[Any]:
    merged = list(current)
    for item in patch:
        if not isinstance(item, dict):
            continue
        position = _position(merged, key, item.get(key))
        if item.get("$patch") == "delete":
            if position is not None:
                del merged[position]
        elif position is None:
            merged.append(_strip(item))
        else:
            result = _merge_map(merged[position], item)
            if result is _DELETE:
                del merged[position]
            else:
                merged[position] = result
    if isinstance(order, list):
        wanted = [entry.get(key) for entry in order if isinstance(entry, dict)]
        rank = {value: i for i, value in enumerate(wanted)}
        # Ordered items first, in the given order; the server's others keep their order.
        merged.sort(key=lambda i: rank.get(i.get(key) if isinstance(i, dict) else None, len(rank)))
    return merged


def _position(items: list[Any], key: str, value: Any) -> int | None:
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == value:
            return i
    return None


def _merge_primitives(
    current: list[Any], patch: list[Any], order: Any, delete_primitives: Any
) -> list[Any]:
    removed = list(delete_primitives) if isinstance(delete_primitives, list) else []
    merged = [v for v in current if v not in removed]
    merged += [v for v in patch if v not in merged and v not in removed]
    if isinstance(order, list):
        rank = {value: i for i, value in enumerate(order) if not isinstance(value, dict | list)}
        merged.sort(key=lambda v: rank.get(v, len(rank)))
    return merged


def _strip(value: Any) -> Any:
    """A patch fragment as plain data: directives dropped."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
