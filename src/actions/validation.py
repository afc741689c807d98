"""Request validation with the IDL's own ``buf.validate`` rules.

One validator for the process: it compiles the rules of a message type once and caches
them, so a request costs only the evaluation.
"""

from __future__ import annotations

import protovalidate
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from connect_proto import Code, RpcError

_validator = protovalidate.Validator()


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
    violations = _validator.collect_violations(message)
    if not violations:
        return
    details = error_details_pb2.BadRequest()
    texts: list[str] = []
    for v in violations:
        path = field_path(v)
        texts.append(f"{path}: {v.proto.message}" if path else v.proto.message)
        details.field_violations.add(field=path, description=v.proto.message)
    raise RpcError(Code.INVALID_ARGUMENT, "; ".join(texts), details=(details,))


def invalid(field: str, message: str) -> RpcError:
    """INVALID_ARGUMENT for a rule the IDL cannot express, in the same shape."""
    details = error_details_pb2.BadRequest()
    details.field_violations.add(field=field, description=message)
    return RpcError(Code.INVALID_ARGUMENT, f"{field}: {message}", details=(details,))
