"""TaskAction objects -> the run service's requests (pure functions, no I/O).

What is sent for an object:

- ``RecordActionRequest``: identity, parent, group, subject, input URI and the spec the
  object carries (task template, condition spec or trace spec), once per action.
- ``UpdateActionStatusRequest``: phase, attempts, cache status and start time (the
  object's ``creationTimestamp``); for a signalled condition that succeeded, the signal
  value as ``output`` and the signalling identity as ``principal``; for an aborted action,
  the abort reason and who aborted it (from the annotations Abort writes).

``StatusKey`` is what makes two status reports the same: a report whose key equals the
last one the run service acknowledged is not sent again.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar, cast

from flyteidl2.common.identifier_pb2 import ActionIdentifier
from flyteidl2.common.identity_pb2 import EnrichedIdentity
from flyteidl2.common.phase_pb2 import ActionPhase
from flyteidl2.core.catalog_pb2 import CatalogCacheStatus
from flyteidl2.core.literals_pb2 import Literal
from flyteidl2.core.tasks_pb2 import TaskTemplate
from flyteidl2.task.task_definition_pb2 import TaskIdentifier, TaskSpec
from flyteidl2.workflow.internal_run_service_pb2 import (
    RecordActionRequest,
    UpdateActionStatusRequest,
)
from flyteidl2.workflow.run_definition_pb2 import (
    ActionStatus,
    ConditionAction,
    TaskAction,
    TraceAction,
)
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from actions import naming, objects, phases

KubeObject = dict[str, Any]
M = TypeVar("M", ConditionAction, TraceAction, TaskTemplate, Literal)

# Set once the run service has acknowledged an action's terminal status; such an object
# is ignored from then on (also after a restart). The same key as the label an upstream
# deployment sets, so either marking is honoured.
TERMINAL_RECORDED: Final = "flyte.org/terminal-status-recorded"

# Phases a parent that has created a child has certainly left.
_BEFORE_RUNNING: Final = frozenset(
    {phases.UNSPECIFIED, phases.QUEUED, phases.WAITING_FOR_RESOURCES, phases.INITIALIZING}
)


class BadObject(ValueError):
    """The object lacks what a request needs (identity fields); it cannot be reported."""


@dataclass(frozen=True, slots=True)
class StatusKey:
    """The parts of a status report whose change is worth a new report."""

    phase: int
    attempts: int
    cache_status: int
    signalled: bool
    abort_reason: str

    @property
    def terminal(self) -> bool:
        return phases.is_terminal(self.phase)


def is_marked(obj: KubeObject) -> bool:
    """The run service already has this object's terminal status (annotation written by
    this service, or the label an upstream deployment writes)."""
    meta = obj.get("metadata") or {}
    return (meta.get("annotations") or {}).get(TERMINAL_RECORDED) == "true" or (
        meta.get("labels") or {}
    ).get(TERMINAL_RECORDED) == "true"


def phase_of(obj: KubeObject, *, deleted: bool) -> phases.Phase:
    """As a watcher sees it: a deleted action that had not finished is ABORTED."""
    phase = objects.phase_of_object(obj)
    if deleted and not phases.is_terminal(phase):
        return int(phases.ABORTED)
    return phase


def is_final(obj: KubeObject, *, deleted: bool) -> bool:
    """Whether this state must reach the run service (never dropped under load)."""
    return deleted or phases.is_terminal(objects.phase_of_object(obj))


def action_id_of(obj: KubeObject) -> ActionIdentifier:
    try:
        return objects.action_id_of(obj)
    except (KeyError, TypeError) as exc:
        raise BadObject(f"spec.{exc.args[0] if exc.args else '?'} is missing") from None


def uid_of(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def parent_of(obj: KubeObject) -> str:
    return str((obj.get("spec") or {}).get("parentActionName") or "")


def parent_object_name(action_id: ActionIdentifier, parent: str) -> str:
    return naming.parent_object_name(action_id.run, parent)


# --------------------------------------------------------------------------- RecordAction


def record_request(obj: KubeObject) -> RecordActionRequest:
    """``RecordAction`` for ``obj``. A spec that does not decode is left out (the action
    is still recorded) rather than blocking the report."""
    spec = obj.get("spec") or {}
    request = RecordActionRequest(
        action_id=action_id_of(obj),
        parent=parent_of(obj),
        group=str(spec.get("group") or ""),
        subject=objects.subject_of(obj),
        input_uri=str(spec.get("inputUri") or ""),
    )
    action_type = objects.action_type_of_object(obj)
    if action_type == objects.TYPE_CONDITION:
        condition = _decode(spec.get("conditionSpec"), ConditionAction)
        if condition is not None:
            request.condition.CopyFrom(condition)
    elif action_type == objects.TYPE_TRACE:
        trace = _decode(spec.get("traceSpec"), TraceAction)
        if trace is not None:
            request.trace.CopyFrom(trace)
    elif spec.get("taskType") or spec.get("taskTemplate"):
        request.task.CopyFrom(_task_action(spec, request.action_id, objects.queue_of(obj)))
    return request


def _task_action(spec: dict[str, Any], action_id: ActionIdentifier, queue: str) -> TaskAction:
    task = TaskAction(
        id=TaskIdentifier(
            org=action_id.run.org, project=action_id.run.project, domain=action_id.run.domain
        )
    )
    template = _decode(spec.get("taskTemplate"), TaskTemplate)
    if template is not None:
        task.id.name = template.id.name
        task.id.version = template.id.version
        task.spec.CopyFrom(
            TaskSpec(task_template=template, short_name=str(spec.get("shortName") or ""))
        )
    if spec.get("cacheKey"):
        task.cache_key.value = str(spec["cacheKey"])
    if queue:
        task.queue = queue
    return task


def _decode(raw: Any, message_type: type[M]) -> M | None:
    if not raw or not isinstance(raw, str):
        return None
    message = message_type()
    try:
        message.ParseFromString(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError, DecodeError):
        return None
    return message


# --------------------------------------------------------------------------- status


def status_key(obj: KubeObject, *, deleted: bool, promoted: bool) -> StatusKey:
    """``promoted``: a child of this action has appeared, so it runs at least."""
    status = obj.get("status") or {}
    phase = phase_of(obj, deleted=deleted)
    if promoted and phase in _BEFORE_RUNNING:
        phase = phases.RUNNING
    return StatusKey(
        phase=phase,
        attempts=_int(status.get("attempts")),
        cache_status=cache_status_of(status.get("cacheStatus")),
        signalled=phase == phases.SUCCEEDED and _signal_value(status) is not None,
        abort_reason=_abort_reason(obj) if phase == phases.ABORTED else "",
    )


def status_request(obj: KubeObject, key: StatusKey) -> UpdateActionStatusRequest:
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    request = UpdateActionStatusRequest(
        action_id=action_id_of(obj),
        status=ActionStatus(
            phase=cast("ActionPhase", key.phase),
            attempts=key.attempts,
            cache_status=cast("CatalogCacheStatus", key.cache_status),
        ),
    )
    start = _timestamp(meta.get("creationTimestamp"))
    times = status
    if objects.is_trace(obj):
        # A trace is stored finished; its own times are the caller's.
        times = obj.get("spec") or {}
        start = _timestamp(times.get("startTime")) or start
    if start is not None:
        request.status.start_time.CopyFrom(start)
    if key.terminal:
        # A TaskAction's status has no end time: the terminal phase's entry in the
        # phase history says when it ended.
        history = status.get("phaseHistory") or [{}]
        end = _timestamp(times.get("endTime")) or _timestamp(history[-1].get("occurredAt"))
        if end is not None:
            request.status.end_time.CopyFrom(end)
    if key.signalled:
        value = _signal_value(status)
        if value is not None:
            request.output.CopyFrom(value)
        principal = _signalled_by(status)
        if principal is not None:
            request.principal.CopyFrom(principal)
    if key.phase == phases.ABORTED:
        if key.abort_reason:
            request.abort_reason = key.abort_reason
        aborted_by = _identity((meta.get("annotations") or {}).get(naming.ANNOTATION_ABORTED_BY))
        if aborted_by is not None:
            request.principal.CopyFrom(aborted_by)
    return request


def promotion_request(action_id: ActionIdentifier) -> UpdateActionStatusRequest:
    """The parent of a new child is running: all the run service needs is the phase."""
    return UpdateActionStatusRequest(
        action_id=action_id,
        status=ActionStatus(phase=phases.RUNNING),
    )


# Unlike any key read from an object (attempts never below 0), so that the parent's own
# RUNNING report, with its start time and attempts, still goes out after a promotion.
PROMOTION_KEY: Final = StatusKey(phases.RUNNING, -1, 0, False, "")


def cache_status_of(value: Any) -> int:
    """``status.cacheStatus``: the enum number (as the executor writes it) or its name
    (as this service's Update stores it); anything else counts as unset."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if value in CatalogCacheStatus.values() else 0
    if isinstance(value, str) and value in CatalogCacheStatus.keys():
        return int(CatalogCacheStatus.Value(value))
    return 0


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _abort_reason(obj: KubeObject) -> str:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(naming.ANNOTATION_ABORT_REASON) or "")


def _signal_value(status: dict[str, Any]) -> Literal | None:
    """This service stores ``status.signal.value``; the executor's schema has
    ``status.signalValue``. Both are base64 of a serialized Literal."""
    signal = status.get("signal")
    raw = signal.get("value") if isinstance(signal, dict) else None
    return _decode(raw or status.get("signalValue"), Literal)


def _signalled_by(status: dict[str, Any]) -> EnrichedIdentity | None:
    signal = status.get("signal")
    by = signal.get("signalledBy") if isinstance(signal, dict) else None
    return _identity(by if by is not None else status.get("signalledBy"))


def _identity(value: Any) -> EnrichedIdentity | None:
    """An identity as stored: a JSON object (dict or text) of ``EnrichedIdentity``, or a
    bare subject string (the executor's ``signalledBy``)."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            identity = EnrichedIdentity()
            identity.user.id.subject = value
            return identity
        value = parsed
    if not isinstance(value, dict):
        return None
    identity = EnrichedIdentity()
    try:
        json_format.ParseDict(value, identity, ignore_unknown_fields=True)
    except json_format.ParseError:
        return None
    return identity


def _timestamp(value: Any) -> Timestamp | None:
    if not value or not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts
