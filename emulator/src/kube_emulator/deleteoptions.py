"""DeleteOptions from a JSON body or, only when the body is empty, the query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import StatusError, bad_request, invalid, invalid_object, not_supported

ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
POLICIES = ("Orphan", "Background", "Foreground")


@dataclass(frozen=True)
class DeleteOptions:
    propagation_policy: str | None = None
    orphan_dependents: bool | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    grace_period_seconds: int | None = None
    dry_run: bool = False

    def should_orphan(self, current_finalizers: list[str]) -> bool:
        # apiserver's shouldOrphanDependents: explicit options, then existing finalizers,
        # then the CR default (Background, i.e. no orphaning).
        if self.orphan_dependents is not None:
            return self.orphan_dependents
        if self.propagation_policy is not None:
            return self.propagation_policy == "Orphan"
        for fin in current_finalizers:
            if fin == ORPHAN:
                return True
            if fin == FOREGROUND:
                return False
        return False

    def should_foreground(self, current_finalizers: list[str]) -> bool:
        if self.orphan_dependents is not None:
            return False
        if self.propagation_policy is not None:
            return self.propagation_policy == "Foreground"
        for fin in current_finalizers:
            if fin == FOREGROUND:
                return True
            if fin == ORPHAN:
                return False
        return False


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise bad_request(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def parse_delete_options(body: Any, query: dict[str, str]) -> DeleteOptions:
    if body is not None:
        if not isinstance(body, dict):
            raise bad_request("json: cannot unmarshal into Go value of type v1.DeleteOptions")
        source = body
        precond = body.get("preconditions") or {}
        dry = body.get("dryRun") or []
        dry_run = "All" in dry if isinstance(dry, list) else False
    else:
        source = {}
        for key in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
            if key in query:
                source[key] = query[key]
        if "orphanDependents" in source:
            source["orphanDependents"] = parse_bool(source["orphanDependents"])
        if "gracePeriodSeconds" in source:
            try:
                source["gracePeriodSeconds"] = int(source["gracePeriodSeconds"])
            except ValueError:
                raise bad_request("invalid gracePeriodSeconds") from None
        precond = {}
        dry_run = query.get("dryRun") == "All"
    policy = source.get("propagationPolicy")
    orphan = source.get("orphanDependents")
    errs = []
    if policy is not None and policy not in POLICIES:
        errs.append(not_supported("propagationPolicy", policy, list(POLICIES)))
    if policy is not None and orphan is not None:
        errs.append(
            invalid(
                "propagationPolicy",
                policy,
                "orphanDependents and deletionPropagation cannot be both set",
            )
        )
    if errs:
        err: StatusError = invalid_object("DeleteOptions", "DeleteOptions", "", "", errs)
        err.details = {"kind": "DeleteOptions", "causes": [e.cause() for e in errs]}
        raise err
    return DeleteOptions(
        propagation_policy=policy,
        orphan_dependents=orphan,
        precondition_uid=precond.get("uid"),
        precondition_rv=precond.get("resourceVersion"),
        grace_period_seconds=source.get("gracePeriodSeconds"),
        dry_run=dry_run,
    )
