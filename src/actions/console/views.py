"""Stored TaskAction objects as the read API's messages (``flyte_actions.console.v1``).

Pure functions of one object, in the shape Flyte's executor reads and writes: times come
from ``metadata.creationTimestamp`` and ``status.phaseHistory`` (the executor's words,
``Queued``, ``Executing``, ``Completed`` ..., each with when it happened); a trace carries
its own start and end time in its spec.
"""

from __future__ import annotations

import binascii
from datetime import UTC, datetime
from typing import Any, Final

from flyteidl2.core.literals_pb2 import Literal
from flyteidl2.core.types_pb2 import SimpleType
from flyteidl2.workflow.run_definition_pb2 import ConditionAction
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from actions import naming, objects, phases
from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.store.base import KubeObject

VALUE_TYPES: Final = {
    SimpleType.BOOLEAN: "bool",
    SimpleType.INTEGER: "int",
    SimpleType.FLOAT: "float",
    SimpleType.STRING: "string",
}
# Phases reached once the action is doing its work, and those after which it is done.
_STARTED: Final = frozenset({phases.INITIALIZING, phases.RUNNING})
_ENDED: Final = phases.TERMINAL
_UINT32_MAX: Final = 2**32 - 1


def parse_time(text: str | None) -> Timestamp | None:
    """An RFC 3339 UTC time as stored (``...Z``, with or without fractions), or None."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def metadata_time(ts: Timestamp) -> str:
    """A Timestamp in the format of ``metadata.creationTimestamp`` (whole seconds)."""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set(message: Any, field: str, ts: Timestamp | None) -> None:
    if ts is not None:
        getattr(message, field).CopyFrom(ts)


def _history(status: dict[str, Any]) -> list[tuple[str, str]]:
    """``(phase name, when)`` per ``phaseHistory`` entry, its word read as a phase."""
    return [
        (
            phases.name(phases.phase_of_word(str(item.get("phase", "")))),
            str(item.get("occurredAt", "")),
        )
        for item in status.get("phaseHistory") or ()
        if isinstance(item, dict)
    ]


_STARTED_NAMES: Final = frozenset(phases.name(p) for p in _STARTED)
_ENDED_NAMES: Final = frozenset(phases.name(p) for p in _ENDED)


def created_text(obj: KubeObject) -> str:
    """When the action was enqueued, as precisely as stored (its first phase entry)."""
    history = _history(obj.get("status") or {})
    if history and history[0][1]:
        return history[0][1]
    return str(obj["metadata"].get("creationTimestamp") or "")


def _started_text(obj: KubeObject) -> str:
    spec = obj.get("spec") or {}
    if objects.is_trace(obj) and spec.get("startTime"):
        return str(spec["startTime"])
    history = _history(obj.get("status") or {})
    return next((at for phase, at in history if phase in _STARTED_NAMES), "")


def _ended_text(obj: KubeObject, phase: str) -> str:
    if phase not in _ENDED_NAMES:
        return ""
    spec = obj.get("spec") or {}
    if objects.is_trace(obj) and spec.get("endTime"):
        return str(spec["endTime"])
    history = _history(obj.get("status") or {})
    return next((at for p, at in reversed(history) if p in _ENDED_NAMES), "")


def _count(value: object) -> int:
    """A non-negative count as stored; 0 for anything else (a hand-made object)."""
    try:
        count = int(value) if isinstance(value, int | float | str) else 0
    except (ValueError, OverflowError):
        return 0
    return min(max(count, 0), _UINT32_MAX)


def _error(status: dict[str, Any]) -> cpb.ActionError | None:
    err = status.get("errorState")
    if not isinstance(err, dict):
        return None
    return cpb.ActionError(
        kind=str(err.get("kind", "")).upper(),
        code=str(err.get("code", "")),
        message=str(err.get("message", "")),
    )


def literal_text(value: Literal) -> str:
    """A bool/int/float/string literal as text (``true``, ``3``, ``0.5``, ``yes``)."""
    primitive = value.scalar.primitive
    kind = primitive.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "boolean":
        return "true" if primitive.boolean else "false"
    return str(getattr(primitive, kind))


def _condition(spec: dict[str, Any], status: dict[str, Any]) -> cpb.ConditionInfo | None:
    raw = spec.get("conditionSpec")
    if not raw:
        return None
    cond = ConditionAction()
    try:
        cond.ParseFromString(objects.unb64(raw))
    except (DecodeError, binascii.Error, ValueError):  # a hand-made object: show the rest
        return cpb.ConditionInfo()
    info = cpb.ConditionInfo(name=cond.name, prompt=cond.prompt, description=cond.description)
    if cond.type.WhichOneof("type") == "simple":
        info.value_type = VALUE_TYPES.get(cond.type.simple, "")
    if status.get("signalValue"):
        try:
            info.value = literal_text(objects.literal_of(status["signalValue"]))
        except (DecodeError, binascii.Error, ValueError):
            info.value = "(unreadable)"
    return info


def action_view(obj: KubeObject) -> cpb.ActionView:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    phase = phases.name(objects.phase_of_object(obj))
    view = cpb.ActionView(
        name=str(spec.get("actionName", "")),
        parent=str(spec.get("parentActionName", "")),
        type=objects.action_type_of_object(obj),
        phase=phase,
        attempts=_count(status.get("attempts")),
        task=str(spec.get("shortName") or spec.get("taskType") or ""),
        group=str(spec.get("group", "")),
        deleting=bool(meta.get("deletionTimestamp")),
    )
    _set(view, "created_at", parse_time(created_text(obj)))
    _set(view, "started_at", parse_time(_started_text(obj)))
    _set(view, "ended_at", parse_time(_ended_text(obj, phase)))
    for name, at in _history(status):
        transition = view.phase_history.add(phase=name)
        _set(transition, "occurred_at", parse_time(at))
    error = _error(status)
    if error is not None:
        view.error.CopyFrom(error)
    annotations = meta.get("annotations") or {}
    view.abort_reason = str(annotations.get(naming.ANNOTATION_ABORT_REASON, ""))
    view.aborted_by = str(annotations.get(naming.ANNOTATION_ABORTED_BY, ""))
    condition = _condition(spec, status)
    if condition is not None:
        view.condition.CopyFrom(condition)
    return view


def run_id_of(obj: KubeObject) -> cpb.RunId:
    spec = obj.get("spec") or {}
    return cpb.RunId(
        org=objects.org_of(obj),
        project=str(spec.get("project", "")),
        domain=str(spec.get("domain", "")),
        name=str(spec.get("runName", "")),
    )


def run_summary(root: KubeObject) -> cpb.RunSummary:
    view = action_view(root)
    summary = cpb.RunSummary(
        run=run_id_of(root),
        root_action=view.name,
        phase=view.phase,
        task=view.task,
        error=view.error.message or view.abort_reason,
    )
    for field in ("created_at", "started_at", "ended_at"):
        if view.HasField(field):
            getattr(summary, field).CopyFrom(getattr(view, field))
    return summary


def tree_order(views: list[cpb.ActionView]) -> list[cpb.ActionView]:
    """Parents before their children (depth first), siblings by creation time. Actions
    whose parent is not among them (gone, or being deleted) follow as roots."""
    names = {v.name for v in views}
    children: dict[str, list[cpb.ActionView]] = {}
    for v in views:
        children.setdefault(v.parent if v.parent in names else "", []).append(v)
    for group in children.values():
        group.sort(key=lambda v: (v.created_at.seconds, v.created_at.nanos, v.name))
    out: list[cpb.ActionView] = []
    stack = list(reversed(children.get("", [])))
    while stack:
        v = stack.pop()
        out.append(v)
        stack.extend(reversed(children.get(v.name, [])))
    return out
