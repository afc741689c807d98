"""Phases as Kubernetes-style conditions on ``status.conditions``.

Three condition types are always written together so that exactly one is True:
``Progressing`` for live phases, ``Succeeded`` and ``Failed`` for terminal ones; the
reason names the phase (``_CONDITION`` below is the whole mapping). Conditions follow the
Kubernetes API conventions ("Typical status properties": ``type``, ``status``,
``reason``, ``message``, ``lastTransitionTime``), https://github.com/kubernetes/community/
blob/master/contributors/devel/sig-architecture/api-conventions.md#typical-status-properties
"""

from __future__ import annotations

from typing import Any, Final

from flyteidl2.common import phase_pb2

Phase = int  # flyteidl2.common.ActionPhase value

UNSPECIFIED: Final = phase_pb2.ACTION_PHASE_UNSPECIFIED
QUEUED: Final = phase_pb2.ACTION_PHASE_QUEUED
WAITING_FOR_RESOURCES: Final = phase_pb2.ACTION_PHASE_WAITING_FOR_RESOURCES
INITIALIZING: Final = phase_pb2.ACTION_PHASE_INITIALIZING
RUNNING: Final = phase_pb2.ACTION_PHASE_RUNNING
SUCCEEDED: Final = phase_pb2.ACTION_PHASE_SUCCEEDED
FAILED: Final = phase_pb2.ACTION_PHASE_FAILED
ABORTED: Final = phase_pb2.ACTION_PHASE_ABORTED
TIMED_OUT: Final = phase_pb2.ACTION_PHASE_TIMED_OUT
PAUSED: Final = phase_pb2.ACTION_PHASE_PAUSED
RECOVERED: Final = phase_pb2.ACTION_PHASE_RECOVERED

TERMINAL: Final = frozenset({SUCCEEDED, FAILED, TIMED_OUT, ABORTED, RECOVERED})
KNOWN: Final = frozenset(phase_pb2.ActionPhase.values())

PROGRESSING: Final = "Progressing"
SUCCEEDED_TYPE: Final = "Succeeded"
FAILED_TYPE: Final = "Failed"

REASON_PERMANENT_FAILURE: Final = "PermanentFailure"
REASON_RETRYABLE_FAILURE: Final = "RetryableFailure"

# phase -> (condition type that is True, its reason)
_CONDITION: Final[dict[Phase, tuple[str, str]]] = {
    QUEUED: (PROGRESSING, "Queued"),
    WAITING_FOR_RESOURCES: (PROGRESSING, "WaitingForResources"),
    INITIALIZING: (PROGRESSING, "Initializing"),
    RUNNING: (PROGRESSING, "Executing"),
    PAUSED: (PROGRESSING, "Paused"),
    SUCCEEDED: (SUCCEEDED_TYPE, "Completed"),
    RECOVERED: (SUCCEEDED_TYPE, "Recovered"),
    FAILED: (FAILED_TYPE, REASON_PERMANENT_FAILURE),
    TIMED_OUT: (FAILED_TYPE, "TimedOut"),
    ABORTED: (FAILED_TYPE, "Aborted"),
}
_PROGRESSING_PHASE: Final = {
    reason: phase for phase, (ctype, reason) in _CONDITION.items() if ctype == PROGRESSING
}
_FAILED_PHASE: Final = {"TimedOut": TIMED_OUT, "Aborted": ABORTED}

_NAMES: Final = {v: phase_pb2.ActionPhase.Name(v).removeprefix("ACTION_PHASE_") for v in KNOWN}


def is_terminal(phase: Phase) -> bool:
    return phase in TERMINAL


def name(phase: Phase) -> str:
    """Short name used in the phase history (``QUEUED``, ``RUNNING`` ...)."""
    return _NAMES.get(phase, str(phase))


def phase_of(status: dict[str, Any] | None) -> Phase:
    """The phase recorded in ``status.conditions``; UNSPECIFIED when none is True."""
    if not status:
        return UNSPECIFIED
    progressing: str | None = None
    for cond in status.get("conditions") or ():
        if cond.get("status") != "True":
            continue
        ctype = cond.get("type")
        reason = cond.get("reason", "")
        if ctype == SUCCEEDED_TYPE:
            return RECOVERED if reason == "Recovered" else SUCCEEDED
        if ctype == FAILED_TYPE:
            return _FAILED_PHASE.get(reason, FAILED)
        if ctype == PROGRESSING:
            progressing = reason
    if progressing is None:
        return UNSPECIFIED
    return _PROGRESSING_PHASE.get(progressing, RUNNING)


def conditions_for(
    phase: Phase,
    now: str,
    previous: list[dict[str, Any]] | None = None,
    *,
    message: str = "",
    failure_reason: str | None = None,
) -> list[dict[str, Any]]:
    """The three conditions for ``phase``. ``lastTransitionTime`` moves only for a
    condition whose status flips, as Kubernetes conventions ask."""
    ctype, reason = _CONDITION[phase]
    if phase == FAILED and failure_reason:
        reason = failure_reason
    before = {c.get("type"): c for c in previous or ()}
    out: list[dict[str, Any]] = []
    for t in (PROGRESSING, SUCCEEDED_TYPE, FAILED_TYPE):
        status = "True" if t == ctype else "False"
        cond_reason = reason if t == ctype or t == PROGRESSING else "NotReached"
        old = before.get(t)
        if old is None or old.get("status") != status:
            transition_time = now
        else:
            transition_time = old.get("lastTransitionTime", now)
        out.append(
            {
                "type": t,
                "status": status,
                "reason": cond_reason,
                "message": message if t == ctype else "",
                "lastTransitionTime": transition_time,
            }
        )
    return out
