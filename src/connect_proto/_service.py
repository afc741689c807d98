"""Routes built once, at start-up, from protobuf service descriptors and a handler object.

Handler methods are looked up by the snake_case form of the RPC name
(``WatchForUpdates`` -> ``watch_for_updates``) and must have these shapes, where ``ctx``
is a ``RequestContext``:

- unary:            ``async def m(self, request: Req, ctx) -> Resp``
- server streaming: ``async def m(self, request: Req, ctx, send: SendMessage[Resp]) -> None``
- client streaming: ``async def m(self, requests: AsyncIterator[Req], ctx) -> Resp``
- bidi streaming:   ``async def m(self, requests: AsyncIterator[Req], ctx,
  send: SendMessage[Resp]) -> None``

``SendMessage[Resp]`` (``connect_proto.SendMessage``) is ``async (Resp) -> None``: it
sends one response message; a stream ends when the handler returns. It is not ASGI's
``send`` (``AsgiSend``, which takes wire events). A handler reports failure by raising
``connect_proto.RpcError``. Sending through ``send`` rather than yielding from an async
generator keeps trio nurseries and cancel scopes inside the handler legal.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass


class MethodKind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAMING = "server_streaming"
    CLIENT_STREAMING = "client_streaming"
    BIDI_STREAMING = "bidi_streaming"


@dataclass(frozen=True, slots=True)
class RpcRoute:
    """Everything the protocol layer needs to serve one RPC, resolved ahead of time."""

    path: str  # "/pkg.Service/Method"
    service_name: str
    method_name: str
    kind: MethodKind
    input_type: type[Message]
    output_type: type[Message]
    idempotent: bool  # NO_SIDE_EFFECTS: Connect GET allowed
    handler: Callable[..., Awaitable[Any]]


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _kind(method: MethodDescriptor) -> MethodKind:
    if method.client_streaming and method.server_streaming:
        return MethodKind.BIDI_STREAMING
    if method.client_streaming:
        return MethodKind.CLIENT_STREAMING
    if method.server_streaming:
        return MethodKind.SERVER_STREAMING
    return MethodKind.UNARY


def _idempotent(method: MethodDescriptor) -> bool:
    options = method.GetOptions()
    return options.idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


def build_routes(service: ServiceDescriptor, implementation: object) -> list[RpcRoute]:
    """Resolve every method of ``service`` on ``implementation``.

    A method the implementation lacks is still routed and answers UNIMPLEMENTED, as
    generated servers do; a method that is present but not callable is a start-up error.
    """
    from connect_proto._errors import Code, RpcError

    routes: list[RpcRoute] = []
    for method in service.methods:
        attr = getattr(implementation, snake_case(method.name), None)
        if attr is None:
            attr = getattr(implementation, method.name, None)
        if attr is None:

            async def unimplemented(*_: Any, _path: str = method.full_name) -> Any:
                raise RpcError(Code.UNIMPLEMENTED, f"{_path} is not implemented")

            attr = unimplemented
        elif not callable(attr):
            raise TypeError(f"{type(implementation).__name__}.{method.name} is not callable")
        routes.append(
            RpcRoute(
                path=f"/{service.full_name}/{method.name}",
                service_name=service.full_name,
                method_name=method.name,
                kind=_kind(method),
                input_type=GetMessageClass(method.input_type),
                output_type=GetMessageClass(method.output_type),
                idempotent=_idempotent(method),
                handler=attr,
            )
        )
    return routes


def route_table(services: Iterable[tuple[ServiceDescriptor, object]]) -> dict[str, RpcRoute]:
    table: dict[str, RpcRoute] = {}
    for descriptor, implementation in services:
        for route in build_routes(descriptor, implementation):
            if route.path in table:
                raise ValueError(f"route {route.path} registered twice")
            table[route.path] = route
    return table
