"""flyteidl2 messages <-> TaskAction and TraceAction objects (plain Kubernetes-shaped dicts).

The object is the only place an action's state lives, so everything a watcher needs to
rebuild an ``ActionUpdate`` (identity, phase, output location, error, signal value) is on
it; nothing is kept in service memory. A TaskAction is exactly Flyte's executor's
(``k8s/crd.yaml``): what the service needs beyond its schema is in labels and annotations,
and the phase, error and signal are read where the executor writes them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final, cast

from flyteidl2.actions.actions_service_pb2 import Action, EnqueueRequest, WatchForUpdatesResponse
from flyteidl2.common.identifier_pb2 import ActionIdentifier, RunIdentifier
from flyteidl2.common.phase_pb2 import ActionPhase
from flyteidl2.core.execution_pb2 import ExecutionError
from flyteidl2.core.literals_pb2 import Literal
from flyteidl2.core.tasks_pb2 import TaskTemplate
from flyteidl2.workflow.state_service_pb2 import ActionUpdate

from actions import naming, phases, timefmt
from actions.kube_names import is_dns_subdomain, is_label_value, is_qualified_name_part
from actions.validation import invalid

KubeObject = dict[str, Any]

TYPE_TASK: Final = "task"
TYPE_CONDITION: Final = "condition"
TYPE_TRACE: Final = "trace"

# The phase an object has before anything wrote its status (create drops status, as the
# status subresource does); a watcher that sees the ADDED event reports this phase.
INITIAL_PHASE: Final = {
    TYPE_TASK: phases.QUEUED,
    TYPE_CONDITION: phases.PAUSED,
}
RUN_START_TIME_PLACEHOLDER: Final = "{{.runStartTime}}"

_ERROR_KIND: Final = {"USER": ExecutionError.USER, "SYSTEM": ExecutionError.SYSTEM}


@dataclass(frozen=True, slots=True)
class WatchKey:
    """What a watch stream is scoped to: the whole run identity plus the parent name."""

    org: str
    project: str
    domain: str
    run: str
    parent: str

    @classmethod
    def for_parent(cls, parent_id: ActionIdentifier) -> WatchKey:
        r = parent_id.run
        return cls(r.org, r.project, r.domain, r.name, parent_id.name)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def action_type_of(action: Action) -> str:
    which = action.WhichOneof("spec")
    return which if which in (TYPE_CONDITION, TYPE_TRACE) else TYPE_TASK


def parent_name_of(action: Action) -> str | None:
    name = action.parent_action_name if action.HasField("parent_action_name") else ""
    return name or None


def new_object(
    request: EnqueueRequest,
    namespace: str,
    parent: KubeObject | None,
) -> KubeObject:
    """The TaskAction to create for ``request``. ``parent`` is the parent's stored object
    (None for a root): its uid goes into the ownerReference and its run-scoped settings
    (labels, annotations, env vars, interruptible) are inherited.

    The spec holds only fields of Flyte's executor's schema (``k8s/crd.yaml``); what else
    the service needs (org, subject, queue, the run's start time) is in annotations, which
    the API server keeps and the executor's whole-object writes leave alone."""
    action = request.action
    action_id = action.action_id
    run = action_id.run
    action_type = action_type_of(action)
    parent_name = parent_name_of(action)

    spec: dict[str, Any] = {
        "project": run.project,
        "domain": run.domain,
        "runName": run.name,
        "actionName": action_id.name,
        "actionType": action_type,
    }
    _put(spec, "parentActionName", parent_name)
    _put(spec, "inputUri", action.input_uri)
    _put(spec, "runOutputBase", action.run_output_base)
    _put(spec, "group", action.group)
    annotations: dict[str, str] = {}
    _put(annotations, naming.ANNOTATION_ORG, run.org)
    _put(annotations, naming.ANNOTATION_SUBJECT, action.subject)
    start_time = _run_start_time(request, parent)
    _put(annotations, naming.ANNOTATION_RUN_START_TIME, start_time)

    if action_type == TYPE_TASK:
        task = action.task
        template = task.spec.task_template
        if start_time:
            template = _with_run_start_time(template, start_time)
        _put(spec, "taskType", template.type)
        _put(spec, "shortName", task.spec.short_name)
        _put(spec, "cacheKey", task.cache_key.value if task.HasField("cache_key") else "")
        spec["taskTemplate"] = b64(template.SerializeToString(deterministic=True))
        _put(annotations, naming.ANNOTATION_QUEUE, task.queue)
    else:
        spec["conditionSpec"] = b64(action.condition.SerializeToString(deterministic=True))

    labels = naming.action_labels(action_id, action_type, parent_name)
    if action_type == TYPE_TASK:
        _apply_run_settings(spec, labels, annotations, request, parent)

    metadata: dict[str, Any] = {
        "name": naming.object_name(action_id),
        "namespace": namespace,
        "labels": labels,
    }
    if annotations:
        metadata["annotations"] = annotations
    if parent is not None:
        metadata["ownerReferences"] = [owner_reference(parent)]
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": metadata,
        "spec": spec,
    }


def new_trace_object(request: EnqueueRequest, namespace: str, parent: KubeObject) -> KubeObject:
    """The TraceAction for a trace: a kind of its own, never a TaskAction (the executor
    would try to run it), owned by the parent so that it goes with it. A trace is computed
    by its caller and stored finished: it is written once and never changes, so the whole
    record is in ``spec``. A terminal phase the caller reported (e.g. FAILED) is kept,
    anything else means it succeeded."""
    action = request.action
    action_id = action.action_id
    run = action_id.run
    trace = action.trace
    phase = trace.phase if phases.is_terminal(trace.phase) else phases.SUCCEEDED
    spec: dict[str, Any] = {
        "project": run.project,
        "domain": run.domain,
        "runName": run.name,
        "actionName": action_id.name,
        "parentActionName": parent_name_of(action) or "",
        "phase": phases.name(phase),
        "traceSpec": b64(trace.SerializeToString(deterministic=True)),
    }
    _put(spec, "inputUri", action.input_uri)
    _put(spec, "runOutputBase", action.run_output_base)
    _put(spec, "group", action.group)
    _put(spec, "outputUri", trace.outputs.output_uri)
    if trace.HasField("start_time"):
        spec["startTime"] = timefmt.from_timestamp(trace.start_time)
    if trace.HasField("end_time"):
        spec["endTime"] = timefmt.from_timestamp(trace.end_time)
    annotations: dict[str, str] = {}
    _put(annotations, naming.ANNOTATION_ORG, run.org)
    _put(annotations, naming.ANNOTATION_SUBJECT, action.subject)
    metadata: dict[str, Any] = {
        "name": naming.object_name(action_id),
        "namespace": namespace,
        "labels": naming.action_labels(action_id, TYPE_TRACE, parent_name_of(action)),
        "ownerReferences": [owner_reference(parent)],
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.TRACE_KIND,
        "metadata": metadata,
        "spec": spec,
    }


def is_trace(obj: KubeObject) -> bool:
    return obj.get("kind") == naming.TRACE_KIND


def owner_reference(owner: KubeObject) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", naming.API_VERSION),
        "kind": owner.get("kind", naming.KIND),
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": True,
    }


def _put(into: dict[str, Any], key: str, value: str | None) -> None:
    """Set ``key`` only for a non-empty value (the executor omits empty fields too)."""
    if value:
        into[key] = value


def _run_start_time(request: EnqueueRequest, parent: KubeObject | None) -> str:
    if request.HasField("run_spec") and request.run_spec.HasField("run_start_time"):
        return timefmt.from_timestamp(request.run_spec.run_start_time)
    if parent is not None:
        return annotations_of(parent).get(naming.ANNOTATION_RUN_START_TIME, "")
    return ""


def _with_run_start_time(template: TaskTemplate, start_time: str) -> TaskTemplate:
    """``{{.runStartTime}}`` in the container's args replaced with the run's start time
    (the Flyte SDK passes it to tasks this way)."""
    args = template.container.args
    if not any(RUN_START_TIME_PLACEHOLDER in arg for arg in args):
        return template
    out = TaskTemplate()
    out.CopyFrom(template)
    out.container.args[:] = [arg.replace(RUN_START_TIME_PLACEHOLDER, start_time) for arg in args]
    return out


def _inheritable(items: dict[str, str]) -> dict[str, str]:
    """A parent's labels or annotations a child copies: not the service's own
    (``flyte.org/...``), which the child sets for itself."""
    return {k: v for k, v in items.items() if not k.startswith(naming.SERVICE_KEY_PREFIX)}


def _apply_run_settings(
    spec: dict[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
    request: EnqueueRequest,
    parent: KubeObject | None,
) -> None:
    """Run-scoped settings of a task: from the root's run_spec, copied from parent to
    child. Labels and annotations are added where the key is still free; the executor
    copies them onto the action's pods."""
    if parent is not None:
        pmeta = parent.get("metadata") or {}
        for key, value in _inheritable(pmeta.get("labels") or {}).items():
            labels.setdefault(key, value)
        for key, value in _inheritable(pmeta.get("annotations") or {}).items():
            annotations.setdefault(key, value)
        pspec = parent.get("spec") or {}
        for key in ("envVars", "interruptible"):
            if key in pspec:
                spec[key] = pspec[key]
        return
    if not request.HasField("run_spec"):
        return
    run_spec = request.run_spec
    for key, value in run_spec.labels.values.items():
        labels.setdefault(key, value)
    for key, value in run_spec.annotations.values.items():
        annotations.setdefault(key, value)
    envs = {kv.key: kv.value for kv in run_spec.envs.values}
    if envs:
        spec["envVars"] = envs
    if run_spec.HasField("interruptible"):
        spec["interruptible"] = run_spec.interruptible.value


def initial_status(obj: KubeObject, action: Action, now: str) -> dict[str, Any]:
    """The status Enqueue writes right after creating the object."""
    phase = INITIAL_PHASE[action_type_of_object(obj)]
    return {
        "conditions": phases.conditions_for(phase, now),
        "phaseHistory": [{"phase": phases.reason_of(phase), "occurredAt": now}],
    }


def action_type_of_object(obj: KubeObject) -> str:
    """``spec.actionType``; absent or empty means task, as for the executor."""
    if is_trace(obj):
        return TYPE_TRACE
    return str((obj.get("spec") or {}).get("actionType") or TYPE_TASK)


def annotations_of(obj: KubeObject) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def org_of(obj: KubeObject) -> str:
    return str(annotations_of(obj).get(naming.ANNOTATION_ORG) or "")


def subject_of(obj: KubeObject) -> str:
    return str(annotations_of(obj).get(naming.ANNOTATION_SUBJECT) or "")


def queue_of(obj: KubeObject) -> str:
    return str(annotations_of(obj).get(naming.ANNOTATION_QUEUE) or "")


def phase_of_object(obj: KubeObject) -> phases.Phase:
    if is_trace(obj):
        return phases.value_of(str((obj.get("spec") or {}).get("phase") or ""), phases.SUCCEEDED)
    phase = phases.phase_of(obj.get("status"))
    if phase == phases.UNSPECIFIED:
        return INITIAL_PHASE.get(action_type_of_object(obj), phases.QUEUED)
    return phase


def action_id_of(obj: KubeObject) -> ActionIdentifier:
    spec = obj["spec"]
    return ActionIdentifier(
        run=RunIdentifier(
            org=org_of(obj),
            project=spec["project"],
            domain=spec["domain"],
            name=spec["runName"],
        ),
        name=spec["actionName"],
    )


def watch_key_of(obj: KubeObject) -> WatchKey | None:
    """The stream scope an object's updates go to; None for a root (no parent)."""
    spec = obj.get("spec") or {}
    parent = spec.get("parentActionName")
    if not parent:
        return None
    # .get throughout: a hand-made object missing fields must not stop the fan-out.
    return WatchKey(
        org_of(obj),
        spec.get("project", ""),
        spec.get("domain", ""),
        spec.get("runName", ""),
        parent,
    )


def output_uri_of(obj: KubeObject, default_namespace: str) -> str:
    spec = obj["spec"]
    if is_trace(obj) and spec.get("outputUri"):
        return str(spec["outputUri"])
    meta = obj["metadata"]
    attempts = int((obj.get("status") or {}).get("attempts") or 0)
    return naming.output_uri(
        meta.get("namespace") or default_namespace,
        meta["name"],
        spec.get("runOutputBase", ""),
        spec["actionName"],
        attempts,
    )


def action_update(
    obj: KubeObject, default_namespace: str, *, deleted: bool = False
) -> ActionUpdate:
    """The ``ActionUpdate`` a watcher sees for ``obj``. A deleted object that was not
    terminal is reported ABORTED; a terminal one keeps its phase."""
    phase = phase_of_object(obj)
    if deleted and not phases.is_terminal(phase):
        phase = phases.ABORTED
    update = ActionUpdate(
        action_id=action_id_of(obj),
        phase=cast("ActionPhase", phase),  # phases.Phase is the enum's int value
        output_uri=output_uri_of(obj, default_namespace),
    )
    status = obj.get("status") or {}
    if phase == phases.FAILED:
        err = status.get("errorState")
        if err:
            update.error.CopyFrom(
                ExecutionError(
                    code=str(err.get("code", "")),
                    message=str(err.get("message", "")),
                    kind=_ERROR_KIND.get(str(err.get("kind", "")).upper(), ExecutionError.UNKNOWN),
                )
            )
    if status.get("signalValue"):
        update.value.ParseFromString(unb64(status["signalValue"]))
    return update


def watch_response(
    obj: KubeObject, default_namespace: str, *, deleted: bool = False
) -> WatchForUpdatesResponse:
    return WatchForUpdatesResponse(
        action_update=action_update(obj, default_namespace, deleted=deleted)
    )


SENTINEL: Final = WatchForUpdatesResponse(control_message={"sentinel": True})


def literal_of(value: str) -> Literal:
    lit = Literal()
    lit.ParseFromString(unb64(value))
    return lit


def resource_version(obj: KubeObject) -> int:
    """resourceVersion as an integer (one increasing counter per store)."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


# --------------------------------------------------------------------------- limits

# (request field, CRD field, min, max): the executor's schema limits on what Enqueue
# copies into the spec, checked before anything is written so that a too-long name is
# INVALID_ARGUMENT naming the request field, not a refusal by the API server.
_LENGTHS: Final = (
    ("action.action_id.run.name", "spec.runName", 1, 30),
    ("action.action_id.run.project", "spec.project", 1, 63),
    ("action.action_id.run.domain", "spec.domain", 1, 63),
    ("action.action_id.name", "spec.actionName", 1, 30),
    ("action.group", "spec.group", 0, 256),
)
_TASK_LENGTHS: Final = (
    ("action.task.spec.task_template.type", "spec.taskType", 0, 63),
    ("action.task.spec.short_name", "spec.shortName", 0, 63),
    ("action.task.cache_key.value", "spec.cacheKey", 0, 256),
)


def _field(message: Any, path: str) -> str:
    for part in path.split("."):
        message = getattr(message, part)
    return str(message)


def _check_length(request: EnqueueRequest, field: str, target: str, low: int, high: int) -> None:
    value = _field(request, field)
    if not low <= len(value) <= high:
        limit = f"at most {high}" if low == 0 else f"{low} to {high}"
        raise invalid(field, f"must have {limit} characters ({target} of the TaskAction)")


def _check_key(field: str, key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if not is_qualified_name_part(name) or (slash and not is_dns_subdomain(prefix)):
        raise invalid(field, f"{key!r} is not a valid Kubernetes label or annotation key")


def check_fits(request: EnqueueRequest) -> None:
    """INVALID_ARGUMENT, naming the field, for a request the TaskAction cannot hold: names
    longer than the executor's schema allows, run-spec labels and annotations that are
    not valid Kubernetes keys (and label values)."""
    action = request.action
    for limits in _LENGTHS:
        _check_length(request, *limits)
    parent = parent_name_of(action)
    if parent is not None and len(parent) > 30:
        raise invalid(
            "action.parent_action_name",
            "must have 1 to 30 characters (spec.parentActionName of the TaskAction)",
        )
    if action_type_of(action) == TYPE_TASK:
        for limits in _TASK_LENGTHS:
            _check_length(request, *limits)
    if not request.HasField("run_spec"):
        return
    for key, value in request.run_spec.labels.values.items():
        _check_key("run_spec.labels", key)
        if not is_label_value(value):
            raise invalid("run_spec.labels", f"{value!r} (for {key!r}) is not a valid label value")
    for key in request.run_spec.annotations.values:
        _check_key("run_spec.annotations", key)
