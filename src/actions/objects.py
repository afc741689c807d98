"""flyteidl2 messages <-> TaskAction objects (plain Kubernetes-shaped dicts).

The object is the only place an action's state lives, so everything a watcher needs to
rebuild an ``ActionUpdate`` (identity, phase, output location, error, signal value) is on
it; nothing is kept in service memory.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

from flyteidl2.actions.actions_service_pb2 import Action, EnqueueRequest, WatchForUpdatesResponse
from flyteidl2.common.identifier_pb2 import ActionIdentifier, RunIdentifier
from flyteidl2.core.execution_pb2 import ExecutionError
from flyteidl2.core.literals_pb2 import Literal
from flyteidl2.workflow.state_service_pb2 import ActionUpdate

from actions import naming, phases, timefmt

KubeObject = dict[str, Any]

TYPE_TASK: Final = "task"
TYPE_CONDITION: Final = "condition"
TYPE_TRACE: Final = "trace"

# The phase an object has before anything wrote its status (create drops status, as the
# status subresource does); a watcher that sees the ADDED event reports this phase.
INITIAL_PHASE: Final = {
    TYPE_TASK: phases.QUEUED,
    TYPE_CONDITION: phases.PAUSED,
    TYPE_TRACE: phases.SUCCEEDED,
}

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
    return which if which in INITIAL_PHASE else TYPE_TASK


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
    are inherited."""
    action = request.action
    action_id = action.action_id
    run = action_id.run
    action_type = action_type_of(action)
    parent_name = parent_name_of(action)

    spec: dict[str, Any] = {
        "org": run.org,
        "project": run.project,
        "domain": run.domain,
        "runName": run.name,
        "actionName": action_id.name,
        "actionType": action_type,
        "inputUri": action.input_uri,
        "runOutputBase": action.run_output_base,
        "group": action.group,
    }
    if parent_name:
        spec["parentActionName"] = parent_name
    if action.subject:
        spec["subject"] = action.subject

    if action_type == TYPE_TASK:
        task = action.task
        template = task.spec.task_template
        spec["taskType"] = template.type
        spec["shortName"] = task.spec.short_name
        spec["cacheKey"] = task.cache_key.value if task.HasField("cache_key") else ""
        spec["taskTemplate"] = b64(template.SerializeToString(deterministic=True))
        if task.queue:
            spec["queue"] = task.queue
    elif action_type == TYPE_CONDITION:
        spec["conditionSpec"] = b64(action.condition.SerializeToString(deterministic=True))
    else:
        spec["traceSpec"] = b64(action.trace.SerializeToString(deterministic=True))
        if action.trace.outputs.output_uri:
            spec["traceOutputUri"] = action.trace.outputs.output_uri

    _apply_run_settings(spec, request, parent)

    metadata: dict[str, Any] = {
        "name": naming.object_name(action_id),
        "namespace": namespace,
        "labels": naming.action_labels(action_id, action_type, parent_name),
    }
    if parent is not None:
        pmeta = parent["metadata"]
        metadata["ownerReferences"] = [
            {
                "apiVersion": naming.API_VERSION,
                "kind": naming.KIND,
                "name": pmeta["name"],
                "uid": pmeta["uid"],
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": metadata,
        "spec": spec,
    }


def _apply_run_settings(
    spec: dict[str, Any], request: EnqueueRequest, parent: KubeObject | None
) -> None:
    """Run-scoped settings: from the root's run_spec, copied from parent to child."""
    if parent is not None:
        pspec = parent.get("spec", {})
        for key in ("envVars", "interruptible", "runSpec"):
            if key in pspec:
                spec[key] = pspec[key]
        return
    if not request.HasField("run_spec"):
        return
    run_spec = request.run_spec
    envs = {kv.key: kv.value for kv in run_spec.envs.values}
    if envs:
        spec["envVars"] = envs
    if run_spec.HasField("interruptible"):
        spec["interruptible"] = run_spec.interruptible.value
    spec["runSpec"] = b64(run_spec.SerializeToString(deterministic=True))


def initial_status(obj: KubeObject, action: Action, now: str) -> dict[str, Any]:
    """The status Enqueue writes right after creating the object."""
    action_type = obj["spec"]["actionType"]
    phase = INITIAL_PHASE[action_type]
    status: dict[str, Any] = {}
    if action_type == TYPE_TRACE:
        trace = action.trace
        # A trace is computed by the caller; it is stored finished. A terminal phase the
        # caller reported (e.g. FAILED) is kept, anything else means it succeeded.
        if phases.is_terminal(trace.phase):
            phase = trace.phase
        if trace.HasField("start_time"):
            status["startTime"] = timefmt.from_timestamp(trace.start_time)
        if trace.HasField("end_time"):
            status["endTime"] = timefmt.from_timestamp(trace.end_time)
    status["conditions"] = phases.conditions_for(phase, now)
    status["phaseHistory"] = [{"phase": phases.name(phase), "occurredAt": now}]
    return status


def phase_of_object(obj: KubeObject) -> phases.Phase:
    phase = phases.phase_of(obj.get("status"))
    if phase == phases.UNSPECIFIED:
        initial: phases.Phase = INITIAL_PHASE.get(
            obj.get("spec", {}).get("actionType", TYPE_TASK), phases.QUEUED
        )
        return initial
    return phase


def action_id_of(obj: KubeObject) -> ActionIdentifier:
    spec = obj["spec"]
    return ActionIdentifier(
        run=RunIdentifier(
            org=spec.get("org", ""),
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
        spec.get("org", ""),
        spec.get("project", ""),
        spec.get("domain", ""),
        spec.get("runName", ""),
        parent,
    )


def output_uri_of(obj: KubeObject, default_namespace: str) -> str:
    spec = obj["spec"]
    if spec.get("actionType") == TYPE_TRACE and spec.get("traceOutputUri"):
        uri: str = spec["traceOutputUri"]
        return uri
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
        phase=phase,
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
    signal = status.get("signal")
    if signal and signal.get("value"):
        update.value.ParseFromString(unb64(signal["value"]))
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
