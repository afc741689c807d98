"""Map a URL path onto a served kind, namespace, name and subresource."""

from __future__ import annotations

from dataclasses import dataclass

from .resources import Registry, ResourceType


@dataclass(frozen=True)
class ResourcePath:
    rtype: ResourceType
    version: str
    namespace: str | None  # None: cluster-scoped kind, or a namespaced kind across namespaces
    name: str | None
    subresource: str | None

    @property
    def all_namespaces(self) -> bool:
        return self.rtype.namespaced and self.namespace is None


def resolve(registry: Registry, path: str) -> ResourcePath | None:
    """None means Go's plain-text ``404 page not found``."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    # /namespaces/NS/<plural>[/name[/sub]] addresses a namespaced kind ...
    if rest[0] == "namespaces" and len(rest) >= 3:
        rtype = registry.lookup(group, version, rest[2])
        if rtype is not None and rtype.namespaced:
            return _build(rtype, version, rest[1], rest[3:])
        if not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")):
            return None
    # ... everything else a cluster-scoped kind, or the all-namespaces collection.
    rtype = registry.lookup(group, version, rest[0])
    if rtype is None:
        return None
    if rtype.namespaced:
        return ResourcePath(rtype, version, None, None, None) if len(rest) == 1 else None
    return _build(rtype, version, None, rest[1:])


def _build(
    rtype: ResourceType, version: str, namespace: str | None, rest: list[str]
) -> ResourcePath | None:
    if len(rest) > 2:
        return None
    name = rest[0] if rest else None
    sub = rest[1] if len(rest) == 2 else None
    return ResourcePath(rtype, version, namespace, name, sub)
