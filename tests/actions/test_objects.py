"""Messages <-> TaskAction objects, and the phase <-> conditions table."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from actions_harness import aid, condition_req, task_req, trace_req
from flyteidl2.common import phase_pb2 as P
from flyteidl2.core.execution_pb2 import ExecutionError
from flyteidl2.workflow.run_definition_pb2 import TraceAction

from actions import objects, phases

# What a reader of status.conditions (kubectl, Flyte's executor) sees for each phase, in
# the executor's own words: phase -> (the condition type that is True, its reason)
TABLE = {
    P.ACTION_PHASE_QUEUED: ("Progressing", "Queued"),
    P.ACTION_PHASE_WAITING_FOR_RESOURCES: ("Progressing", "WaitingForResources"),
    P.ACTION_PHASE_INITIALIZING: ("Progressing", "Initializing"),
    P.ACTION_PHASE_RUNNING: ("Progressing", "Executing"),
    P.ACTION_PHASE_PAUSED: ("Progressing", "Paused"),
    P.ACTION_PHASE_SUCCEEDED: ("Succeeded", "Completed"),
    P.ACTION_PHASE_FAILED: ("Failed", "PermanentFailure"),
    P.ACTION_PHASE_TIMED_OUT: ("Failed", "TimedOut"),
    P.ACTION_PHASE_ABORTED: ("Failed", "Aborted"),
}


@pytest.mark.parametrize("phase", list(TABLE))
def test_phase_to_conditions_table(phase: int) -> None:
    conds = phases.conditions_for(phase, "2026-01-01T00:00:00Z")
    true = [c for c in conds if c["status"] == "True"]
    assert len(true) == 1
    ctype, reason = TABLE[phase]
    assert true[0]["type"] == ctype
    assert true[0]["reason"] == reason
    # As the executor writes them: Progressing always, False once terminal, with the
    # terminal reason; every condition has a reason, a message and a transition time.
    progressing = next(c for c in conds if c["type"] == "Progressing")
    if ctype != "Progressing":
        assert progressing["status"] == "False" and progressing["reason"] == reason
        assert {c["type"] for c in conds} == {"Progressing", ctype}
    else:
        assert [c["type"] for c in conds] == ["Progressing"]
    assert all(c["lastTransitionTime"] and "message" in c and c["reason"] for c in conds)


@pytest.mark.parametrize("phase", sorted(phases.KNOWN - {P.ACTION_PHASE_UNSPECIFIED}))
def test_phase_round_trip(phase: int) -> None:
    assert phases.phase_of({"conditions": phases.conditions_for(phase, "t")}) == phase


@pytest.mark.parametrize("reason", ["RetryableFailure", "PermanentFailure"])
def test_failed_reasons_read_as_failed(reason: str) -> None:
    conds = [{"type": "Failed", "status": "True", "reason": reason}]
    assert phases.phase_of({"conditions": conds}) == P.ACTION_PHASE_FAILED


def test_terminal_phases() -> None:
    assert phases.TERMINAL == {
        P.ACTION_PHASE_SUCCEEDED,
        P.ACTION_PHASE_FAILED,
        P.ACTION_PHASE_TIMED_OUT,
        P.ACTION_PHASE_ABORTED,
        P.ACTION_PHASE_RECOVERED,
    }


def test_transition_time_moves_only_on_flip() -> None:
    first = phases.conditions_for(P.ACTION_PHASE_QUEUED, "t1")
    second = phases.conditions_for(P.ACTION_PHASE_RUNNING, "t2", first)
    assert {c["type"]: c["lastTransitionTime"] for c in second} == {"Progressing": "t1"}
    third = phases.conditions_for(P.ACTION_PHASE_SUCCEEDED, "t3", second)
    assert {c["type"]: c["lastTransitionTime"] for c in third} == {
        "Progressing": "t3",
        "Succeeded": "t3",
    }


def test_no_conditions_is_unspecified_and_reads_as_initial_phase() -> None:
    assert phases.phase_of({}) == P.ACTION_PHASE_UNSPECIFIED
    for action_type, phase in (
        ("task", P.ACTION_PHASE_QUEUED),
        ("", P.ACTION_PHASE_QUEUED),  # the executor's "empty means task"
        ("condition", P.ACTION_PHASE_PAUSED),
    ):
        obj = {"spec": {"actionType": action_type}}
        assert objects.phase_of_object(obj) == phase


def _stored(obj: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = {**obj, "metadata": {**obj["metadata"], "uid": "u-1", "resourceVersion": "7"}}
    if status is not None:
        obj["status"] = status
    return obj


def test_new_object_for_root_task() -> None:
    req = task_req(aid("a0"), run_spec={"envs": {"values": [{"key": "K", "value": "V"}]}})
    obj = objects.new_object(req, "ns1", None)
    assert obj["metadata"]["namespace"] == "ns1"
    assert "ownerReferences" not in obj["metadata"]
    assert obj["spec"]["envVars"] == {"K": "V"}
    assert "parentActionName" not in obj["spec"]
    # Only the executor's spec fields; the org is an annotation (and a label).
    assert "org" not in obj["spec"]
    assert obj["metadata"]["annotations"]["flyte.org/org"] == "o"


def test_new_object_child_inherits_from_parent_object() -> None:
    parent = _stored(objects.new_object(task_req(aid("a0")), "flyte", None))
    parent["spec"].update(envVars={"X": "1"}, interruptible=False)
    parent["metadata"]["labels"]["team"] = "ml"
    parent["metadata"]["annotations"].update({"note": "n", "flyte.org/subject": "parent-subject"})
    child = objects.new_object(task_req(aid("c1"), parent="a0"), "flyte", parent)
    assert child["spec"]["envVars"] == {"X": "1"}
    assert child["spec"]["interruptible"] is False
    assert child["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert child["metadata"]["labels"]["team"] == "ml"
    assert child["metadata"]["labels"]["flyte.org/action"] == "c1"
    assert child["metadata"]["annotations"]["note"] == "n"
    # The service's own keys are the child's own, never copied from the parent.
    assert "flyte.org/subject" not in child["metadata"]["annotations"]
    cond = objects.new_object(condition_req(aid("k1"), "a0"), "flyte", parent)
    assert "team" not in cond["metadata"]["labels"]  # conditions inherit nothing
    assert "envVars" not in cond["spec"]


def test_action_update_from_object() -> None:
    obj = _stored(objects.new_object(task_req(aid("c1"), parent="a0"), "flyte", None))
    obj["status"] = {
        "conditions": phases.conditions_for(P.ACTION_PHASE_FAILED, "t"),
        "attempts": 2,
        "errorState": {"code": "E1", "kind": "SYSTEM", "message": "boom"},
    }
    u = objects.action_update(obj, "flyte")
    assert u.action_id == aid("c1")
    assert u.phase == P.ACTION_PHASE_FAILED
    assert u.output_uri.endswith("/org/p/d/run/c1/2")
    assert (u.error.code, u.error.message, u.error.kind) == ("E1", "boom", ExecutionError.SYSTEM)


def test_error_only_when_failed() -> None:
    obj = _stored(objects.new_object(task_req(aid("c1"), parent="a0"), "flyte", None))
    obj["status"] = {
        "conditions": phases.conditions_for(P.ACTION_PHASE_RUNNING, "t"),
        "errorState": {"code": "E1", "kind": "USER", "message": "earlier attempt"},
    }
    assert not objects.action_update(obj, "flyte").HasField("error")


@pytest.mark.parametrize(
    ("phase", "reported"),
    [
        (P.ACTION_PHASE_RUNNING, P.ACTION_PHASE_ABORTED),
        (P.ACTION_PHASE_QUEUED, P.ACTION_PHASE_ABORTED),
        (P.ACTION_PHASE_PAUSED, P.ACTION_PHASE_ABORTED),
        (P.ACTION_PHASE_SUCCEEDED, P.ACTION_PHASE_SUCCEEDED),
        (P.ACTION_PHASE_FAILED, P.ACTION_PHASE_FAILED),
        (P.ACTION_PHASE_TIMED_OUT, P.ACTION_PHASE_TIMED_OUT),
        (P.ACTION_PHASE_ABORTED, P.ACTION_PHASE_ABORTED),
    ],
)
def test_deleted_object_reports_aborted_unless_terminal(phase: int, reported: int) -> None:
    obj = _stored(
        objects.new_object(task_req(aid("c1"), parent="a0"), "flyte", None),
        {"conditions": phases.conditions_for(phase, "t")},
    )
    assert objects.action_update(obj, "flyte", deleted=True).phase == reported


def test_condition_and_trace_objects() -> None:
    cond = objects.new_object(condition_req(aid("k1"), "a0"), "flyte", None)
    assert cond["spec"]["actionType"] == "condition"
    assert "taskTemplate" not in cond["spec"]
    parent = _stored(objects.new_object(task_req(aid("a0")), "flyte", None))
    req = trace_req(aid("t1"), "a0", phase=P.ACTION_PHASE_FAILED, start_time={"seconds": 5})
    trace = objects.new_trace_object(req, "flyte", parent)
    assert trace["kind"] == "TraceAction"  # never a TaskAction
    assert trace["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    stored = TraceAction.FromString(base64.b64decode(trace["spec"]["traceSpec"]))
    assert stored.outputs.output_uri == "s3://bucket/trace/out"
    assert objects.phase_of_object(trace) == P.ACTION_PHASE_FAILED  # a reported terminal phase
    assert trace["spec"]["startTime"].startswith("1970-01-01T00:00:05")
    assert objects.output_uri_of(trace, "flyte") == "s3://bucket/trace/out"
    plain = objects.new_trace_object(trace_req(aid("t2"), "a0"), "flyte", parent)
    assert objects.phase_of_object(plain) == P.ACTION_PHASE_SUCCEEDED
    assert objects.watch_key_of(plain) == objects.WatchKey.for_parent(aid("a0"))


def test_watch_key_of_root_is_none() -> None:
    obj = objects.new_object(task_req(aid("a0")), "flyte", None)
    assert objects.watch_key_of(obj) is None
    child = objects.new_object(task_req(aid("c1"), parent="a0"), "flyte", None)
    assert objects.watch_key_of(child) == objects.WatchKey.for_parent(aid("a0"))
