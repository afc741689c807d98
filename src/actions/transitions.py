"""Pure status transitions for Update and Signal: stored status in, new status out.

Each function either returns the status to write, returns None when the request changes
nothing (a no-op success: nothing is written, no watch event), or raises RpcError. Being
pure, they are re-run unchanged on a fresh read after a write conflict.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flyteidl2.common.identity_pb2 import EnrichedIdentity
from flyteidl2.core.literals_pb2 import Literal
from flyteidl2.core.types_pb2 import SimpleType
from flyteidl2.workflow.run_definition_pb2 import ActionStatus, ConditionAction
from google.protobuf.timestamp_pb2 import Timestamp

from actions import objects, phases, timefmt
from actions.validation import invalid
from connect_proto import Code, RpcError

Status = dict[str, Any]

# declared simple type -> the Primitive oneof member a signal value must use
_SIGNAL_KINDS: dict[int, str] = {
    SimpleType.BOOLEAN: "boolean",
    SimpleType.INTEGER: "integer",
    SimpleType.FLOAT: "float_value",
    SimpleType.STRING: "string_value",
}


def set_phase(
    status: Status, phase: phases.Phase, now: str, *, message: str = "", reason: str | None = None
) -> None:
    """Record ``phase`` in conditions and in the phase history, in the executor's words
    (``Queued``, ``Executing``, ``Completed`` ...); the history, like the executor's, is
    append-only and never repeats its last entry."""
    status["conditions"] = phases.conditions_for(
        phase, now, status.get("conditions"), message=message, reason=reason
    )
    word = phases.reason_of(phase, reason)
    history = list(status.get("phaseHistory") or ())
    if not history or history[-1].get("phase") != word:
        entry: dict[str, Any] = {"phase": word, "occurredAt": now}
        if message:
            entry["message"] = message
        history.append(entry)
        status["phaseHistory"] = history


def apply_update(obj: objects.KubeObject, attempt: int, update: ActionStatus) -> Status | None:
    """The status after an ``Update``, or None when it changes nothing.

    An unknown phase is INVALID_ARGUMENT. An attempt older than the attempts already
    recorded is FAILED_PRECONDITION (a superseded executor). A terminal phase is final:
    repeating it, or leaving the phase unset, is a no-op; moving elsewhere is
    FAILED_PRECONDITION. Otherwise the phase moves (unset keeps the current one), the
    attempt count only grows and the cache status (its enum number, as the executor
    writes it) replaces what was stored. Start and end time and duration are checked but
    not stored: the executor's status has no place for them (its whole-status writes
    would erase them), and the object's creation time and phase history say as much.
    """
    stored: Status = obj.get("status") or {}
    current = objects.phase_of_object(obj)
    stored_attempts = int(stored.get("attempts") or 0)
    requested = update.phase
    if requested not in phases.KNOWN:
        raise invalid("status.phase", f"unknown phase {requested}")
    if attempt < stored_attempts:
        raise RpcError(
            Code.FAILED_PRECONDITION,
            f"attempt {attempt} is older than the {stored_attempts} attempts already recorded",
        )
    if phases.is_terminal(current):
        # Terminal state is frozen: repeating it (or leaving the phase unset) changes
        # nothing, moving elsewhere is refused.
        if requested in (phases.UNSPECIFIED, current):
            return None
        raise RpcError(
            Code.FAILED_PRECONDITION,
            f"action is already {phases.name(current)}; cannot move to {phases.name(requested)}",
        )
    # Every change below replaces a top-level key (set_phase builds new lists), so a
    # shallow copy keeps ``stored`` intact for the no-op comparison at the end.
    new = dict(stored)
    target = current if requested == phases.UNSPECIFIED else requested
    if not stored.get("conditions") or target != current:
        set_phase(new, target, timefmt.now())
    new["attempts"] = max(stored_attempts, attempt, update.attempts)
    new["cacheStatus"] = int(update.cache_status)
    if update.HasField("start_time"):
        _timestamp("status.start_time", update.start_time)
    if update.HasField("end_time"):
        _timestamp("status.end_time", update.end_time)
    return None if new == stored else new


# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def _timestamp(field: str, ts: Timestamp) -> str:
    """A request timestamp as stored text; one outside Timestamp's range is the client's
    mistake (INVALID_ARGUMENT), not a server failure."""
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise invalid(field, "timestamp out of range (years 1 to 9999)")
    return timefmt.from_timestamp(ts)


def declared_simple_type(obj: objects.KubeObject) -> int | None:
    spec = obj.get("spec") or {}
    raw = spec.get("conditionSpec")
    if not raw:
        return None
    cond = ConditionAction()
    cond.ParseFromString(objects.unb64(raw))
    if cond.type.WhichOneof("type") != "simple":
        return None
    return cond.type.simple


def signal_kind(value: Literal) -> str | None:
    """The Primitive member set in a concrete bool/int/float/string literal, else None."""
    if value.WhichOneof("value") != "scalar" or value.scalar.WhichOneof("value") != "primitive":
        return None
    kind = value.scalar.primitive.WhichOneof("value")
    return kind if kind in _SIGNAL_KINDS.values() else None


def same_signal(a: Literal, b: Literal) -> bool:
    """Both literals hold the same primitive member with the same value."""
    pa, pb = a.scalar.primitive, b.scalar.primitive
    kind = pa.WhichOneof("value")
    if kind is None or kind != pb.WhichOneof("value"):
        return False
    return bool(getattr(pa, kind) == getattr(pb, kind))


def subject_of(identity: EnrichedIdentity | None) -> str:
    """The principal's subject (a user's, else an application's); empty when unknown."""
    if identity is None:
        return ""
    return identity.user.id.subject or identity.application.id.subject


def apply_signal(
    obj: objects.KubeObject,
    value: Literal,
    signalled_by: EnrichedIdentity | None,
    *,
    resolve: bool,
) -> Status | None:
    """The status after a ``Signal``, or None when it changes nothing.

    Only a condition action takes a signal (else FAILED_PRECONDITION), and only a
    concrete bool, int, float or string literal of the condition's declared simple type
    (else INVALID_ARGUMENT). The same value again is a no-op; another value, or a signal
    to a condition already terminal, is FAILED_PRECONDITION. The signal records the
    value (``signalValue``), when (``signalledAt``) and by whom (``signalledBy``, the
    subject), where Flyte's executor looks for them. ``resolve``: no executor runs, so
    this service also moves the condition to SUCCEEDED (reason ``Signaled``), as the
    executor would on its next round.
    """
    spec = obj.get("spec") or {}
    if spec.get("actionType") != objects.TYPE_CONDITION:
        raise RpcError(Code.FAILED_PRECONDITION, "action is not a condition")
    kind = signal_kind(value)
    if kind is None:
        raise invalid("value", "must be a concrete bool, int, float or string literal")
    declared = declared_simple_type(obj)
    if declared is not None and _SIGNAL_KINDS.get(declared) != kind:
        raise invalid(
            "value",
            f"is a {kind} but the condition declares {SimpleType.Name(declared)}",
        )
    stored: Status = obj.get("status") or {}
    previous = stored.get("signalValue")
    if previous:
        if same_signal(objects.literal_of(previous), value):
            return None
        raise RpcError(
            Code.FAILED_PRECONDITION, "condition was already signalled with another value"
        )
    current = objects.phase_of_object(obj)
    if phases.is_terminal(current):
        raise RpcError(Code.FAILED_PRECONDITION, f"condition is already {phases.name(current)}")
    new = dict(stored)  # top-level keys only change, as in apply_update
    now = timefmt.now()
    new["signalValue"] = objects.b64(value.SerializeToString(deterministic=True))
    new["signalledAt"] = now
    subject = subject_of(signalled_by)
    if subject:
        new["signalledBy"] = subject
    if resolve:
        set_phase(new, phases.SUCCEEDED, now, reason=phases.REASON_SIGNALED)
    return new


CONDITION_TIMED_OUT = "ConditionTimedOut"


def condition_deadline(obj: objects.KubeObject) -> datetime | None:
    """When a condition times out (its creation plus the ConditionAction's timeout), or
    None: not a condition, no timeout, or no creation time."""
    spec = obj.get("spec") or {}
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if spec.get("actionType") != objects.TYPE_CONDITION or not spec.get("conditionSpec"):
        return None
    if not created:
        return None
    cond = ConditionAction()
    cond.ParseFromString(objects.unb64(spec["conditionSpec"]))
    if not cond.HasField("timeout") or cond.timeout.ToTimedelta() <= timedelta(0):
        return None
    try:
        start = datetime.fromisoformat(str(created))
    except ValueError:
        return None
    return start + cond.timeout.ToTimedelta()


def apply_condition_timeout(obj: objects.KubeObject, now: datetime) -> Status | None:
    """The status of a condition past its timeout with no signal: TIMED_OUT, as Flyte's
    executor writes it (``Failed`` True, reason ``TimedOut``, ``errorState`` code
    ``ConditionTimedOut``). None when it is not due: signalled, terminal, or in time."""
    deadline = condition_deadline(obj)
    stored: Status = obj.get("status") or {}
    if deadline is None or now < deadline or stored.get("signalValue"):
        return None
    if phases.is_terminal(objects.phase_of_object(obj)):
        return None
    new = dict(stored)
    message = "condition was not signalled before its timeout"
    set_phase(new, phases.TIMED_OUT, timefmt.now(), message=message)
    new["errorState"] = {"code": CONDITION_TIMED_OUT, "kind": "USER", "message": message}
    return new
