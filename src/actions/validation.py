"""Request validation: the IDL's own ``buf.validate`` rules, and what they miss.

One validator for the process: it compiles the rules of a message type once and caches
them, so a request costs only the evaluation. Beyond the IDL's rules, input that passes
them but that the service cannot store is refused here, before anything is written,
with INVALID_ARGUMENT naming the field:

- identifiers with control characters (``"a\\n"``): no store name or label can carry
  them faithfully;
- timestamps the service writes as text, outside years 1 to 9999 (RFC 3339's range).

One IDL rule is evaluated here instead of by protovalidate: ``paused_rule_exclusive``
on ``flyteidl2.task.InlineRule`` names an enum constant
(``flyteidl2.common.ActionPhase.ACTION_PHASE_PAUSED``) that protovalidate's CEL
environment cannot resolve, so for any rule with other than exactly one phase it fails
with an evaluation error instead of an answer. Such rules are checked here (with the
field's own ``repeated`` rules), and protovalidate sees a copy in which each has one
valid phase. A rule protovalidate still cannot evaluate is refused as INVALID_ARGUMENT
naming it (and logged as our bug), never INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import operator
import re
from collections.abc import Iterable, Iterator
from typing import Final, cast

import protovalidate
from buf.validate import validate_pb2  # type: ignore[import-untyped]
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.task import run_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from connect_proto import Code, RpcError

log = logging.getLogger(__name__)

_validator = protovalidate.Validator()

# Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799

# C0 controls, DEL and C1 controls.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_ACTION_ID_PARTS: Final = ("run.org", "run.project", "run.domain", "run.name", "name")

# Per request type: the identifier fields (an ActionIdentifier, or a plain name) ...
_IDENTIFIERS: Final[dict[str, tuple[str, ...]]] = {
    pb.EnqueueRequest.DESCRIPTOR.full_name: ("action.action_id", "action.parent_action_name"),
    pb.UpdateRequest.DESCRIPTOR.full_name: ("action_id",),
    pb.AbortRequest.DESCRIPTOR.full_name: ("action_id",),
    pb.SignalRequest.DESCRIPTOR.full_name: ("action_id", "parent_action_name"),
    pb.WatchForUpdatesRequest.DESCRIPTOR.full_name: ("parent_action_id",),
}
# ... and the timestamps the service stores as text.
_TIMESTAMPS: Final[dict[str, tuple[str, ...]]] = {
    pb.EnqueueRequest.DESCRIPTOR.full_name: ("action.trace.start_time", "action.trace.end_time"),
    pb.UpdateRequest.DESCRIPTOR.full_name: ("status.start_time", "status.end_time"),
}

_INLINE_RULES_PATH: Final = "run_spec.notification_rules.rules"
_ON_PHASES_RULES: Final = (
    run_pb2.InlineRule.DESCRIPTOR.fields_by_name["on_phases"]
    .GetOptions()
    .Extensions[validate_pb2.field]
    .repeated
)
_ALLOWED_PHASES: Final = tuple(getattr(_ON_PHASES_RULES.items.enum, "in"))
_PAUSED_MESSAGE: Final = (
    "a rule subscribing to ACTION_PHASE_PAUSED must not subscribe to other phases"
)


def field_path(violation: protovalidate.Violation) -> str:
    """``a.b[0].c``; empty for a rule on the message itself, which names no field."""
    path = violation.proto.field
    if path is None:
        return ""
    parts: list[str] = []
    for element in path.elements:
        name = element.field_name
        subscript = element.subscript  # a repeated index or map key, when present
        if subscript is not None:
            name = f"{name}[{getattr(subscript, 'value', subscript)!r}]"
        parts.append(name)
    return ".".join(parts)


def validate(message: Message) -> None:
    """Raise INVALID_ARGUMENT naming every offending field (first one first)."""
    problems: list[tuple[str, str]] = []
    target = message
    rules = _inline_rules(message)
    if any(len(rule.on_phases) != 1 for _, rule in rules):
        problems += _inline_rule_problems(rules)
        target = _with_one_phase_per_rule(message)
    try:
        violations = _validator.collect_violations(target)
    except (protovalidate.EvaluationError, protovalidate.CompilationError) as exc:
        # Our bug (a rule the validator cannot evaluate), reported without a traceback.
        log.error("cannot validate %s: %s", message.DESCRIPTOR.name, exc)
        raise invalid("", f"request could not be validated ({exc})") from None
    problems += [(field_path(v), v.proto.message) for v in violations]
    screen = _screen(message.DESCRIPTOR)
    if screen.may_have_problems(message):
        name = message.DESCRIPTOR.full_name
        problems += _identifier_problems(message, _IDENTIFIERS.get(name, ()))
        problems += _timestamp_problems(message, _TIMESTAMPS.get(name, ()))
    if problems:
        raise _invalid_all(problems)


def invalid(field: str, message: str) -> RpcError:
    """INVALID_ARGUMENT for a rule the IDL cannot express, in the same shape."""
    return _invalid_all([(field, message)])


def _invalid_all(problems: list[tuple[str, str]]) -> RpcError:
    details = error_details_pb2.BadRequest()
    texts: list[str] = []
    for path, description in problems:
        texts.append(f"{path}: {description}" if path else description)
        details.field_violations.add(field=path, description=description)
    return RpcError(Code.INVALID_ARGUMENT, "; ".join(texts), details=(details,))


def _get(message: Message, path: str) -> object | None:
    """The value at dotted ``path``; None when a message on the way is not set."""
    value: object = message
    for name, has_presence in _steps(message.DESCRIPTOR, path):
        assert isinstance(value, Message)
        if has_presence and not value.HasField(name):
            return None
        value = getattr(value, name)
    return value


@functools.cache
def _steps(descriptor: Descriptor, path: str) -> tuple[tuple[str, bool], ...]:
    """``path``'s field names, each with whether it is a message field with presence
    (unset is None rather than an empty message): worked out once per type and path."""
    steps: list[tuple[str, bool]] = []
    current: Descriptor | None = descriptor
    for name in path.split("."):
        assert current is not None, f"{path} goes through a field that is no message"
        field = current.fields_by_name[name]
        steps.append((name, field.has_presence and field.message_type is not None))
        current = field.message_type
    return tuple(steps)


class _Screen:
    """A quick yes/no over a request type's identifiers and timestamps: one attribute read
    per leaf and one regex search, run on every request; the field-naming passes below run
    only when it says yes. Reading an unset message field gives its empty default, whose
    strings are empty and whose timestamp is 0 (in range), so presence needs no check."""

    def __init__(self, descriptor: Descriptor) -> None:
        name = descriptor.full_name
        strings: list[str] = []
        for path in _IDENTIFIERS.get(name, ()):
            *_, (_, is_message) = _steps(descriptor, path)
            strings += [f"{path}.{part}" for part in _ACTION_ID_PARTS] if is_message else [path]
        times = [f"{path}.{part}" for path in _TIMESTAMPS.get(name, ()) for part in _TS_PARTS]
        self._strings = operator.attrgetter(*strings) if strings else None
        self._times = operator.attrgetter(*times) if times else None

    def may_have_problems(self, message: Message) -> bool:
        if self._strings is not None:
            values = self._strings(message)
            text = "".join(values) if isinstance(values, tuple) else values
            if _CONTROL.search(text):
                return True
        if self._times is not None:
            values = self._times(message)
            seconds, nanos = values[0::2], values[1::2]
            if min(seconds) < MIN_TIMESTAMP_SECONDS or max(seconds) > MAX_TIMESTAMP_SECONDS:
                return True
            if min(nanos) < 0 or max(nanos) >= 1_000_000_000:
                return True
        return False


_TS_PARTS: Final = ("seconds", "nanos")


@functools.cache
def _screen(descriptor: Descriptor) -> _Screen:
    return _Screen(descriptor)


def _identifier_problems(message: Message, paths: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for path in paths:
        value = _get(message, path)
        if isinstance(value, Message):
            names = [(f"{path}.{part}", _get(value, part)) for part in _ACTION_ID_PARTS]
        else:
            names = [(path, value)]
        for where, name in names:
            if isinstance(name, str) and _CONTROL.search(name):
                yield where, "must not contain control characters (such as a newline)"


def _timestamp_problems(message: Message, paths: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for path in paths:
        ts = _get(message, path)
        if isinstance(ts, Timestamp) and not (
            MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS
            and 0 <= ts.nanos < 1_000_000_000
        ):
            yield path, "timestamp out of range (years 1 to 9999)"


def _inline_rules(message: Message) -> list[tuple[int, run_pb2.InlineRule]]:
    if not isinstance(message, pb.EnqueueRequest):
        return []
    rules = cast("Iterable[run_pb2.InlineRule] | None", _get(message, _INLINE_RULES_PATH))
    return list(enumerate(rules)) if rules is not None else []


def _inline_rule_problems(
    rules: list[tuple[int, run_pb2.InlineRule]],
) -> Iterator[tuple[str, str]]:
    """``on_phases``' own rules and ``paused_rule_exclusive``, for the rules protovalidate
    will see with one phase only."""
    for index, rule in rules:
        phases = list(rule.on_phases)
        if len(phases) == 1:
            continue  # protovalidate evaluates this one itself
        path = f"{_INLINE_RULES_PATH}[{index}].on_phases"
        if len(phases) < _ON_PHASES_RULES.min_items:
            yield path, f"must contain at least {_ON_PHASES_RULES.min_items} item(s)"
        if _ON_PHASES_RULES.unique and len(set(phases)) != len(phases):
            yield path, "repeated value must contain unique items"
        for position, phase in enumerate(phases):
            if _ALLOWED_PHASES and phase not in _ALLOWED_PHASES:
                yield f"{path}[{position}]", f"must be in list {list(_ALLOWED_PHASES)}"
        if phase_pb2.ACTION_PHASE_PAUSED in phases and len(phases) > 1:
            yield path, _PAUSED_MESSAGE


def _with_one_phase_per_rule(message: Message) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    rules = cast("Iterable[run_pb2.InlineRule]", _get(copy, _INLINE_RULES_PATH))
    for rule in rules:
        if len(rule.on_phases) != 1:
            del rule.on_phases[:]
            rule.on_phases.append(
                cast("phase_pb2.ActionPhase", _ALLOWED_PHASES[0] if _ALLOWED_PHASES else 0)
            )
    return copy
