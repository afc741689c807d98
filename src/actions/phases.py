"""Phases as Kubernetes-style conditions on ``status.conditions``, in Flyte's executor's
vocabulary (the executor reconciles the same objects and writes the same conditions).

``Progressing`` is True for live phases; a terminal phase sets ``Progressing`` False and
``Succeeded`` or ``Failed`` True. The reason names the phase (``_CONDITION`` below is the
whole mapping) and is also the word the phase history records. Conditions follow the
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
REASON_SIGNALED: Final = "Signaled"
REASON_TIMED_OUT: Final = "TimedOut"

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
_BY_NAME: Final = {n: v for v, n in _NAMES.items()}


def is_terminal(phase: Phase) -> bool:
    return phase in TERMINAL


def name(phase: Phase) -> str:
    """Short name used in the phase history (``QUEUED``, ``RUNNING`` ...)."""
    return _NAMES.get(phase, str(phase))


def value_of(short_name: str, default: Phase) -> Phase:
    """The phase ``name`` gives ``short_name``; ``default`` for an unknown one."""
    return _BY_NAME.get(short_name, default)


def phase_of(status: dict[str, Any] | None) -> Phase:
    """The phase recorded in ``status.conditions``; UNSPECIFIED when none is True.

    First match: ``Succeeded`` True is SUCCEEDED (RECOVERED for this service's own
    ``Recovered``); ``Failed`` True is TIMED_OUT for ``TimedOut``, ABORTED for ``Aborted``,
    else FAILED; ``Progressing`` True maps its reason (a reason outside the table, such as
    the executor's ``RetryableFailure`` during an in-place retry, counts as RUNNING)."""
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


# The executor's words beyond the table above, as the phase a person would read them as.
_OTHER_WORDS: Final[dict[str, Phase]] = {
    REASON_SIGNALED: SUCCEEDED,
    REASON_RETRYABLE_FAILURE: RUNNING,
    "PluginNotFound": FAILED,
    "InvalidSpec": FAILED,
}
_BY_WORD: Final[dict[str, Phase]] = {
    **{word: phase for phase, (_, word) in _CONDITION.items()},
    **_OTHER_WORDS,
}


def phase_of_word(word: str) -> Phase:
    """The phase a ``phaseHistory`` entry (or a condition's reason) stands for:
    ``Executing`` is RUNNING, ``Signaled`` SUCCEEDED; UNSPECIFIED for an unknown word."""
    return _BY_WORD.get(word, UNSPECIFIED)


def reason_of(phase: Phase, reason: str | None = None) -> str:
    """The executor's word for ``phase``: the reason of its True condition, also what the
    phase history records. ``reason`` overrides it (``Signaled``, ``RetryableFailure``)."""
    return reason or _CONDITION[phase][1]


def conditions_for(
    phase: Phase,
    now: str,
    previous: list[dict[str, Any]] | None = None,
    *,
    message: str = "",
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """The conditions Flyte's executor writes for ``phase``: ``Progressing`` True with the
    phase's reason while it is live; once terminal, ``Progressing`` False and
    ``Succeeded`` or ``Failed`` True, both with the terminal reason. ``lastTransitionTime``
    moves only for a condition whose status flips, as Kubernetes conventions ask."""
    ctype = _CONDITION[phase][0]
    word = reason_of(phase, reason)
    before = {c.get("type"): c for c in previous or ()}
    wanted = [(PROGRESSING, "True" if ctype == PROGRESSING else "False")]
    if ctype != PROGRESSING:
        wanted.append((ctype, "True"))
    out: list[dict[str, Any]] = []
    for t, status in wanted:
        old = before.get(t)
        if old is None or old.get("status") != status:
            transition_time = now
        else:
            transition_time = old.get("lastTransitionTime", now)
        out.append(
            {
                "type": t,
                "status": status,
                "reason": word,
                "message": message,
                "lastTransitionTime": transition_time,
            }
        )
    return out
