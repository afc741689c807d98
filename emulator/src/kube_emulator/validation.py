"""Name, label, finalizer and ownerReference rules from apimachinery."""

from __future__ import annotations

import re
from typing import Any

from .errors import FieldError, forbidden, invalid, required

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_RE = re.compile(rf"^{_DNS1123_LABEL}$")
DNS1123_SUBDOMAIN_RE = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. "
    "'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or "
    "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
    "regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', "
    "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  "
    "or 'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(DNS1123_SUBDOMAIN_RE.match(value))


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(DNS1123_LABEL_RE.match(value))


def qualified_name_errors(value: str) -> list[str]:
    """Problems with a ``[prefix/]name`` key; empty when valid."""
    problems: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif not is_dns1123_subdomain(prefix):
            problems.append("prefix part " + SUBDOMAIN_MSG)
    else:
        return [
            "a qualified name "
            + QUALIFIED_NAME_MSG[len("name part ") :]
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME_RE.match(name):
        problems.append(QUALIFIED_NAME_MSG)
    return problems


def label_value_errors(value: str) -> list[str]:
    problems: list[str] = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _LABEL_VALUE_RE.match(value):
        problems.append(LABEL_VALUE_MSG)
    return problems


def validate_metadata(
    meta: dict[str, Any], *, namespaced: bool, name_is_label: bool = False
) -> list[FieldError]:
    """ObjectMeta checks shared by every kind."""
    errs: list[FieldError] = []
    name = meta.get("name")
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    elif name_is_label:
        if not is_dns1123_label(name):
            detail = LABEL_MSG if len(name) <= 63 else "must be no more than 63 characters"
            errs.append(invalid("metadata.name", name, detail))
    elif not is_dns1123_subdomain(name):
        detail = SUBDOMAIN_MSG if len(name) <= 253 else "must be no more than 253 characters"
        errs.append(invalid("metadata.name", name, detail))
    if namespaced and not meta.get("namespace"):
        errs.append(required("metadata.namespace"))
    errs += _validate_string_map(meta.get("labels"), "metadata.labels", check_values=True)
    errs += _validate_string_map(meta.get("annotations"), "metadata.annotations")
    errs += validate_finalizers(meta.get("finalizers"))
    errs += validate_owner_references(meta.get("ownerReferences"))
    return errs


def _validate_string_map(value: Any, path: str, *, check_values: bool = False) -> list[FieldError]:
    errs: list[FieldError] = []
    if value is None:
        return errs
    if not isinstance(value, dict):
        return [invalid(path, value, "must be a map of strings")]
    for key, val in value.items():
        for problem in qualified_name_errors(key):
            errs.append(invalid(path, key, problem))
        if not isinstance(val, str):
            errs.append(invalid(f"{path}[{key}]", val, "must be a string"))
        elif check_values:
            for problem in label_value_errors(val):
                errs.append(invalid(f"{path}[{key}]", val, problem))
    return errs


def validate_finalizers(finalizers: Any) -> list[FieldError]:
    if finalizers is None:
        return []
    if not isinstance(finalizers, list):
        return [invalid("metadata.finalizers", finalizers, "must be a list of strings")]
    errs: list[FieldError] = []
    for i, fin in enumerate(finalizers):
        if not isinstance(fin, str):
            errs.append(invalid(f"metadata.finalizers[{i}]", fin, "must be a string"))
            continue
        for problem in qualified_name_errors(fin):
            errs.append(invalid(f"metadata.finalizers[{i}]", fin, problem))
    if "orphan" in finalizers and "foregroundDeletion" in finalizers:
        errs.append(
            invalid(
                "metadata.finalizers",
                "foregroundDeletion",
                "finalizer foregroundDeletion and orphan cannot be both set",
            )
        )
    return errs


def validate_owner_references(refs: Any) -> list[FieldError]:
    if refs is None:
        return []
    if not isinstance(refs, list):
        return [invalid("metadata.ownerReferences", refs, "must be a list")]
    errs: list[FieldError] = []
    controllers = 0
    for i, ref in enumerate(refs):
        path = f"metadata.ownerReferences[{i}]"
        if not isinstance(ref, dict):
            errs.append(invalid(path, ref, "must be an object"))
            continue
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                errs.append(invalid(f"{path}.{key}", ref.get(key, ""), f"{key} must not be empty"))
        if ref.get("controller") is True:
            controllers += 1
    if controllers > 1:
        errs.append(
            invalid(
                "metadata.ownerReferences",
                refs,
                "Only one reference can have Controller set to true",
            )
        )
    return errs


def forbid_new_finalizers(old: list[str], new: list[str]) -> list[FieldError]:
    added = [f for f in new if f not in old]
    if added:
        return [
            forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted, found new "
                f"finalizers {added!r}".replace("'", '"'),
            )
        ]
    return []
