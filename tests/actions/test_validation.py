"""Request validation with the IDL's buf.validate rules (actions.validation)."""

from __future__ import annotations

import pytest
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.core import literals_pb2
from google.rpc import error_details_pb2

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
