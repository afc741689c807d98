"""RPC status codes and the one error type every protocol speaks.

The table below is the single place where a code's gRPC number, Connect name and
Connect-unary HTTP status live; every protocol handler reads it from here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message


class Code(enum.Enum):
    """An RPC status code: value is (gRPC number, Connect name, HTTP status)."""

    CANCELED = (1, "canceled", 499)
    UNKNOWN = (2, "unknown", 500)
    INVALID_ARGUMENT = (3, "invalid_argument", 400)
    DEADLINE_EXCEEDED = (4, "deadline_exceeded", 504)
    NOT_FOUND = (5, "not_found", 404)
    ALREADY_EXISTS = (6, "already_exists", 409)
    PERMISSION_DENIED = (7, "permission_denied", 403)
    RESOURCE_EXHAUSTED = (8, "resource_exhausted", 429)
    FAILED_PRECONDITION = (9, "failed_precondition", 400)
    ABORTED = (10, "aborted", 409)
    OUT_OF_RANGE = (11, "out_of_range", 400)
    UNIMPLEMENTED = (12, "unimplemented", 501)
    INTERNAL = (13, "internal", 500)
    UNAVAILABLE = (14, "unavailable", 503)
    DATA_LOSS = (15, "data_loss", 500)
    UNAUTHENTICATED = (16, "unauthenticated", 401)

    @property
    def grpc(self) -> int:
        return self.value[0]

    @property
    def connect_name(self) -> str:
        return self.value[1]

    @property
    def http_status(self) -> int:
        return self.value[2]

    @classmethod
    def from_grpc(cls, number: int) -> Code:
        return _BY_GRPC.get(number, Code.UNKNOWN)

    @classmethod
    def from_connect_name(cls, name: str) -> Code:
        return _BY_NAME.get(name, Code.UNKNOWN)

    @classmethod
    def from_http_status(cls, status: int) -> Code:
        """The code a client infers from an HTTP status that carries no explicit code."""
        return _HTTP_TO_CODE.get(status, Code.UNKNOWN)


_BY_GRPC = {c.grpc: c for c in Code}
_BY_NAME = {c.connect_name: c for c in Code}
_HTTP_TO_CODE = {
    400: Code.INTERNAL,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.UNIMPLEMENTED,
    429: Code.UNAVAILABLE,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.UNAVAILABLE,
}


@dataclass
class RpcError(Exception):
    """An RPC failure: a code, a human-readable message and optional typed details.

    Handlers raise it; every protocol renders it in its own wire format. Any other
    exception escaping a handler is logged and reported as INTERNAL with a generic
    message, so no internals reach the client.
    """

    code: Code
    message: str = ""
    details: Sequence[Message] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        super().__init__(self.code, self.message)

    def __str__(self) -> str:
        return (
            f"{self.code.connect_name}: {self.message}" if self.message else self.code.connect_name
        )


def detail_as_any(detail: Message) -> any_pb2.Any:
    """An error detail as ``google.protobuf.Any`` (details may be given packed or not)."""
    if isinstance(detail, any_pb2.Any):
        return detail
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def detail_type_name(detail: any_pb2.Any) -> str:
    """The fully-qualified message name of a packed detail (type URL minus its prefix)."""
    return detail.type_url.rsplit("/", 1)[-1]
