"""One call per protocol through the in-process driver, and its final status decoded.

Shared by the production-feature tests (auth, limits, shutdown, hooks): each case says
how to frame a request for one protocol and how to read the status back, so a test can
be parametrized over Connect unary, Connect streaming, gRPC and gRPC-Web.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from asgi_driver import Response, call_app
from google.protobuf.message import Message
from testsvc.v1 import test_pb2

from connect_proto._errors import Code
from connect_proto._wire.envelope import encode_envelope
from connect_proto._wire.grpc import percent_decode

SVC = "/testsvc.v1.TestService"


@dataclass(frozen=True)
class Status:
    code: Code | None  # None = OK
    message: str
    messages: int  # response messages before the status


@dataclass(frozen=True)
class Case:
    name: str
    content_type: str
    enveloped: bool
    streaming_ok: bool  # may call server-streaming methods
    unary_ok: bool

    def headers(self, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        out = [("content-type", self.content_type)]
        if self.content_type.startswith("application/grpc") and "web" not in self.content_type:
            out.append(("te", "trailers"))
        return [*out, *extra]

    def body(self, message: Message) -> bytes:
        data = message.SerializeToString()
        return encode_envelope(data, 0) if self.enveloped else data

    def status(self, response: Response) -> Status:
        if not self.enveloped:  # Connect unary
            if response.status == 200:
                return Status(None, "", 1)
            err = response.json()
            return Status(Code.from_connect_name(err["code"]), err.get("message", ""), 0)
        frames = response.envelopes()
        data = [f for f in frames if f[0] in (0, 1)]
        if self.content_type.startswith("application/connect"):
            end = json.loads(frames[-1][1])
            err = end.get("error")
            if err is None:
                return Status(None, "", len(data))
            return Status(Code.from_connect_name(err["code"]), err.get("message", ""), len(data))
        if "web" in self.content_type:
            fields: dict[str, str] = {}
            for line in frames[-1][1].decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        else:
            fields = {k.decode(): v.decode() for k, v in response.trailers}
        number = int(fields["grpc-status"])
        message = percent_decode(fields.get("grpc-message", ""))
        return Status(None if number == 0 else Code.from_grpc(number), message, len(data))


CONNECT_UNARY = Case("connect-unary", "application/proto", False, False, True)
CONNECT_STREAM = Case("connect-stream", "application/connect+proto", True, True, False)
GRPC = Case("grpc", "application/grpc", True, True, True)
GRPC_WEB = Case("grpc-web", "application/grpc-web+proto", True, True, True)
ALL = [CONNECT_UNARY, CONNECT_STREAM, GRPC, GRPC_WEB]


def request_for(case: Case) -> tuple[str, Message]:
    """A cheap call valid for the case: Echo for unary protocols, Count for streaming."""
    if case.unary_ok:
        return f"{SVC}/Echo", test_pb2.EchoRequest(message="hi")
    return f"{SVC}/Count", test_pb2.CountRequest(count=2)


async def call(
    app: object,
    case: Case,
    path: str,
    message: Message,
    headers: Sequence[tuple[str, str]] = (),
    **kwargs: object,
) -> tuple[Status, Response]:
    response = await call_app(
        app, path=path, headers=case.headers(headers), body=case.body(message), **kwargs
    )
    return case.status(response), response
