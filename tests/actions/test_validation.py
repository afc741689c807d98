"""Request validation with the IDL's buf.validate rules (actions.validation)."""

from __future__ import annotations

import pytest
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.core import literals_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from actions import validation
from actions.validation import validate
from connect_proto import Code, RpcError


def _field_violations(error: RpcError) -> list[tuple[str, str]]:
    (details,) = error.details
    assert isinstance(details, error_details_pb2.BadRequest)
    return [(v.field, v.description) for v in details.field_violations]


def test_field_rules_name_the_field() -> None:
    with pytest.raises(RpcError) as info:
        validate(pb.AbortRequest())
    assert info.value.code is Code.INVALID_ARGUMENT
    assert _field_violations(info.value) == [("action_id", "value is required")]
    assert info.value.message == "action_id: value is required"


def test_a_rule_on_the_message_itself_names_no_field() -> None:
    # Backoff's own CEL rule: a factor over 1 needs a cap. The violation has no field path
    # at all (not an empty one), which must still be INVALID_ARGUMENT, not a crash.
    with pytest.raises(RpcError) as info:
        validate(literals_pb2.Backoff(factor=2.0))
    assert info.value.code is Code.INVALID_ARGUMENT
    [(field, description)] = _field_violations(info.value)
    assert field == ""
    assert "cap is required" in description
    assert info.value.message == description


# The screen run on every request must say yes exactly when the field-naming passes find
# something: a miss would let a control character or an unwritable timestamp through.
_SET_STRING = {
    "EnqueueRequest": (
        "action.action_id.run.org",
        "action.action_id.run.project",
        "action.action_id.run.domain",
        "action.action_id.run.name",
        "action.action_id.name",
        "action.parent_action_name",
    ),
    "UpdateRequest": ("action_id.run.org", "action_id.run.name", "action_id.name"),
    "SignalRequest": ("action_id.run.domain", "parent_action_name"),
    "WatchForUpdatesRequest": ("parent_action_id.run.project", "parent_action_id.name"),
    "AbortRequest": ("action_id.run.org", "action_id.name"),
}
_SET_TIMESTAMP = {
    "EnqueueRequest": ("action.trace.start_time", "action.trace.end_time"),
    "UpdateRequest": ("status.start_time", "status.end_time"),
}

_text = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["a\n", "\x7f", "x\x9fy", "\x00", "ok", "é", "\u2028"]
)
_seconds = st.integers(-62_135_596_800 - 2, 253_402_300_799 + 2) | st.sampled_from(
    [-62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800, 0]
)
_nanos = st.integers(-2, 1_000_000_001) | st.sampled_from([-1, 0, 999_999_999, 10**9])


def _set(message: Message, path: str, value: object) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    setattr(message, leaf, value)


@st.composite
def _requests(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(sorted(_SET_STRING)))
    message = getattr(pb, kind)()
    for path in _SET_STRING[kind]:
        if draw(st.booleans()):  # unset fields must read as clean
            _set(message, path, draw(_text))
    for path in _SET_TIMESTAMP.get(kind, ()):
        if draw(st.booleans()):
            _set(message, f"{path}.seconds", draw(_seconds))
            _set(message, f"{path}.nanos", draw(_nanos))
    return message


@settings(max_examples=2000, deadline=None)
@given(_requests())
def test_the_quick_screen_agrees_with_the_field_naming_passes(message: Message) -> None:
    name = message.DESCRIPTOR.full_name
    found = [
        *validation._identifier_problems(message, validation._IDENTIFIERS.get(name, ())),
        *validation._timestamp_problems(message, validation._TIMESTAMPS.get(name, ())),
    ]
    assert validation._screen(message.DESCRIPTOR).may_have_problems(message) == bool(found)
