"""The kinds the emulator serves: built-ins and CRD-defined kinds.

Namespaces and CustomResourceDefinitions have behaviour of their own (the namespace
controller, serving CRD-defined kinds). The other built-in kinds are the ones a typical
deployment manifest holds (``kubectl apply -k k8s/``): they are stored generically, without
schema validation, defaulting or controllers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CRD_GROUP = "apiextensions.k8s.io"


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, storage version first
    kind: str
    plural: str
    singular: str
    namespaced: bool
    status_subresource: bool
    builtin: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    list_kind: str = ""
    # Per version: the openAPIV3Schema (None = anything goes) and additionalPrinterColumns.
    schemas: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    printer_columns: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        version = version or self.storage_version
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified(self) -> str:
        """``taskactions.flyte.org``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_kind(self) -> str:
        """``TaskAction.flyte.org``: how Invalid messages name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or f"{self.kind}List"


NAMESPACES = ResourceType(
    group="",
    versions=("v1",),
    kind="Namespace",
    plural="namespaces",
    singular="namespace",
    namespaced=False,
    status_subresource=True,
    builtin=True,
    short_names=("ns",),
)

CRDS = ResourceType(
    group=CRD_GROUP,
    versions=("v1",),
    kind="CustomResourceDefinition",
    plural="customresourcedefinitions",
    singular="customresourcedefinition",
    namespaced=False,
    status_subresource=True,
    builtin=True,
    short_names=("crd", "crds"),
    categories=("api-extensions",),
)


def _generic(
    group: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    status: bool = False,
    short_names: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
) -> ResourceType:
    return ResourceType(
        group=group,
        versions=("v1",),
        kind=kind,
        plural=plural,
        singular=kind.lower(),
        namespaced=namespaced,
        status_subresource=status,
        builtin=True,
        short_names=short_names,
        categories=categories,
    )


RBAC_GROUP = "rbac.authorization.k8s.io"

# Stored as sent (plus server-owned metadata); no schema, defaulting or controllers.
GENERIC_BUILTINS = (
    _generic("", "ConfigMap", "configmaps", short_names=("cm",)),
    _generic("", "Secret", "secrets"),
    _generic("", "ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _generic("", "Service", "services", status=True, short_names=("svc",), categories=("all",)),
    _generic(
        "apps",
        "Deployment",
        "deployments",
        status=True,
        short_names=("deploy",),
        categories=("all",),
    ),
    _generic(RBAC_GROUP, "Role", "roles"),
    _generic(RBAC_GROUP, "RoleBinding", "rolebindings"),
    _generic(RBAC_GROUP, "ClusterRole", "clusterroles", namespaced=False),
    _generic(RBAC_GROUP, "ClusterRoleBinding", "clusterrolebindings", namespaced=False),
)

BUILTINS = (NAMESPACES, CRDS, *GENERIC_BUILTINS)


def resource_type_from_crd(crd: dict[str, Any]) -> ResourceType:
    """Build the served kind from a CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    # The storage version is served first so stored objects carry it by default.
    versions.sort(key=lambda v: not v.get("storage", False))
    schemas: dict[str, Any] = {}
    columns: dict[str, Any] = {}
    status_on = False
    for version in versions:
        schemas[version["name"]] = (version.get("schema") or {}).get("openAPIV3Schema")
        columns[version["name"]] = version.get("additionalPrinterColumns") or []
        if "status" in (version.get("subresources") or {}):
            status_on = True
    plural = names.get("plural", "")
    return ResourceType(
        group=spec.get("group", ""),
        versions=tuple(v["name"] for v in versions),
        kind=names.get("kind", ""),
        plural=plural,
        singular=names.get("singular") or names.get("kind", "").lower(),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        status_subresource=status_on,
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        list_kind=names.get("listKind") or "",
        schemas=schemas,
        printer_columns=columns,
    )


def crd_errors(crd: dict[str, Any]) -> list[str]:
    """The few CRD checks that make a CRD unusable; the real server checks far more."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    problems = []
    name = (crd.get("metadata") or {}).get("name", "")
    if not spec.get("group"):
        problems.append("spec.group: Required value")
    if not names.get("plural") or not names.get("kind"):
        problems.append("spec.names: Required value: plural and kind are required")
    elif name != f"{names['plural']}.{spec.get('group', '')}":
        problems.append(
            f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group'
        )
    versions = spec.get("versions") or []
    if not versions:
        problems.append(
            "spec.versions: Invalid value: null: must have exactly one version "
            "marked as storage version"
        )
    elif sum(1 for v in versions if v.get("storage")) != 1:
        problems.append(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
        )
    for i, version in enumerate(versions):
        for j, column in enumerate(version.get("additionalPrinterColumns") or []):
            problems += _printer_column_errors(
                column, f"spec.versions[{i}].additionalPrinterColumns[{j}]"
            )
    return problems


PRINTER_COLUMN_TYPES = ("boolean", "date", "integer", "number", "string")
PRINTER_COLUMN_FORMATS = (
    "byte",
    "date",
    "date-time",
    "double",
    "float",
    "int32",
    "int64",
    "password",
)


def _supported(values: tuple[str, ...]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _printer_column_errors(column: Any, path: str) -> list[str]:
    """apiextensions' ValidateCustomResourceColumnDefinition."""
    if not isinstance(column, dict):
        return [f"{path}: Invalid value: must be an object"]
    problems = []
    if not column.get("name"):
        problems.append(f"{path}.name: Required value")
    ctype = column.get("type")
    if not ctype:
        problems.append(
            f"{path}.type: Required value: must be one of {','.join(PRINTER_COLUMN_TYPES)}"
        )
    elif ctype not in PRINTER_COLUMN_TYPES:
        problems.append(
            f'{path}.type: Unsupported value: "{ctype}": supported values: '
            + _supported(PRINTER_COLUMN_TYPES)
        )
    fmt = column.get("format")
    if fmt and fmt not in PRINTER_COLUMN_FORMATS:
        problems.append(
            f'{path}.format: Unsupported value: "{fmt}": supported values: '
            + _supported(PRINTER_COLUMN_FORMATS)
        )
    json_path = column.get("jsonPath")
    if not json_path:
        problems.append(f"{path}.JSONPath: Required value")
    elif not str(json_path).startswith("."):
        problems.append(
            f'{path}.jsonPath: Invalid value: "{json_path}": must be a simple json path '
            "starting with ."
        )
    return problems


class Registry:
    """Maps (group, version, plural) and (apiVersion, kind) to served kinds."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str], ResourceType] = {}
        for builtin in BUILTINS:
            self.add(builtin)

    def add(self, rtype: ResourceType) -> None:
        self._types[rtype.key] = rtype

    def remove(self, key: tuple[str, str]) -> None:
        self._types.pop(key, None)

    def get(self, group: str, plural: str) -> ResourceType | None:
        return self._types.get((group, plural))

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        rtype = self._types.get((group, plural))
        if rtype and version in rtype.versions:
            return rtype
        return None

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rtype in self._types.values():
            if rtype.group == group and rtype.kind == kind and version in rtype.versions:
                return rtype
        return None

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def group_versions(self) -> dict[str, list[str]]:
        """Non-core groups and their versions, preferred (storage) version first."""
        groups: dict[str, list[str]] = {}
        for rtype in self._types.values():
            if not rtype.group:
                continue
            known = groups.setdefault(rtype.group, [])
            for version in rtype.versions:
                if version not in known:
                    known.append(version)
        return groups

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self._types.values() if t.group == group and version in t.versions]
