"""Types shared by every layer: the ASGI callables and a streaming handler's ``send``.

Two different things send here, so they have two names: ``AsgiSend`` takes an ASGI event
(bytes on the wire, for the server), ``SendMessage`` takes one response message (what a
server-streaming handler is given).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

Scope = dict[str, Any]
AsgiEvent = dict[str, Any]
AsgiReceive = Callable[[], Awaitable[AsgiEvent]]
AsgiSend = Callable[[AsgiEvent], Awaitable[None]]
AsgiApp = Callable[[Scope, AsgiReceive, AsgiSend], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

M_contra = TypeVar("M_contra", bound=Message, contravariant=True)
SendMessage = Callable[[M_contra], Awaitable[None]]

__all__ = [
    "AsgiApp",
    "AsgiEvent",
    "AsgiReceive",
    "AsgiSend",
    "RawHeaders",
    "Scope",
    "SendMessage",
]
