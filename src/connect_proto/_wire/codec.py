"""Message codecs: binary protobuf and canonical proto3 JSON, in a start-up registry."""

from __future__ import annotations

import json
from typing import Protocol, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

# JSON names the type inside an Any by URL, and json_format resolves it in the default
# descriptor pool: load the well-known types and google.rpc's error details once, so a
# client may send them in Any fields (error details above all).
from google.protobuf import (  # noqa: F401  isort: skip
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  isort: skip

from connect_proto._errors import Code, RpcError

M = TypeVar("M", bound=Message)


class Codec(Protocol):
    name: str  # the codec part of content types: "proto", "json"

    def encode(self, message: Message) -> bytes: ...

    def decode(self, data: bytes, message_type: type[M]) -> M: ...


class ProtoCodec:
    name = "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes, message_type: type[M]) -> M:
        message = message_type()
        try:
            message.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"unmarshal into {_name(message)}: {exc}"
            ) from None
        return message


class JsonCodec:
    """Canonical proto3 JSON; accepts lowerCamel and original names, ignores unknown fields."""

    name = "json"

    def encode(self, message: Message) -> bytes:
        # MessageToDict + compact dumps: no whitespace on the wire.
        as_dict = json_format.MessageToDict(message)
        return json.dumps(as_dict, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, data: bytes, message_type: type[M]) -> M:
        message = message_type()
        if not data:
            raise RpcError(Code.INVALID_ARGUMENT, "zero-length payload is not a valid JSON object")
        try:
            # json.loads rejects trailing garbage after the value, as required.
            value = json.loads(data)
            if not isinstance(value, dict):
                raise ValueError("top-level JSON value is not an object")
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except (
            ValueError,
            json_format.ParseError,
            TypeError,
            AttributeError,
            RecursionError,
        ) as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"unmarshal into {_name(message)}: {exc}"
            ) from None
        return message


def _name(message: Message) -> str:
    return message.DESCRIPTOR.full_name


CODECS: dict[str, Codec] = {"proto": ProtoCodec(), "json": JsonCodec()}
