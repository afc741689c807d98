"""The interface every wire protocol implements: a sans-IO view of one call.

A ``ServerCall`` turns request bytes into messages and handler results into ASGI
events. It never awaits: the runner (``connect_proto._app.runner``) does all I/O, so each
protocol can be tested by feeding bytes and inspecting the events it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from google.protobuf.message import Message

from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._headers import Headers
from connect_proto._service import RpcRoute
from connect_proto._types import AsgiEvent, RawHeaders
from connect_proto._wire.codec import Codec
from connect_proto._wire.compression import Compressor


@dataclass(frozen=True, slots=True)
class CallConfig:
    """Server-wide settings, resolved once at start-up and shared by every call."""

    max_message_size: int
    compressors: Mapping[str, Compressor]
    # Responses smaller than this go out uncompressed: gzip costs more than it saves.
    compress_min_bytes: int = 1024
    # The server's encodings as a header value; derived once, not per response.
    accept_encoding: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accept_encoding", ",".join(self.compressors))


@dataclass(frozen=True, slots=True)
class CallRequest:
    """What dispatch learned about a request before a protocol takes over."""

    route: RpcRoute
    http_method: str
    http_version: str
    headers: Headers
    query_string: bytes
    content_type: str  # the request's content type, normalised, echoed in the response
    codec: Codec


def encode_headers(headers: Headers, prefix: str = "") -> RawHeaders:
    # latin-1 with replacement: a handler's stray non-ASCII must not crash the response.
    return [
        ((prefix + name).encode("latin-1", "replace"), value.encode("latin-1", "replace"))
        for name, value in headers
    ]


def body_event(data: bytes, more_body: bool) -> AsgiEvent:
    return {"type": "http.response.body", "body": data, "more_body": more_body}


class ServerCall(ABC):
    """One call in one wire protocol.

    The runner calls ``negotiate`` first, then ``feed``/``eof`` with request body bytes,
    then ``message_events`` per response message (streaming) or ``unary_events`` (single
    response), and finally ``end_events``. ``head_sent`` is set by the runner once the
    ``http.response.start`` event went out.

    Enveloped protocols implement ``head_event``, ``frame`` and ``tail_events``; the
    Connect unary protocol overrides the three ``*_events`` methods instead.
    """

    protocol: ClassVar[str]

    def __init__(self, request: CallRequest, config: CallConfig) -> None:
        self.request = request
        self.config = config
        self.head_sent = False
        self.request_compressor: Compressor | None = None
        self.response_compressor: Compressor | None = None

    @abstractmethod
    def negotiate(self) -> float | None:
        """Read protocol headers; return the timeout in seconds (None = none) or raise."""

    @abstractmethod
    def feed(self, data: bytes) -> list[Message]:
        """Request body bytes in; complete request messages out."""

    @abstractmethod
    def eof(self) -> list[Message]:
        """End of request body: the last messages, or an error if the body was cut short."""

    def head_event(self, ctx: RequestContext) -> AsgiEvent:
        raise NotImplementedError

    def frame(self, message: Message) -> bytes:
        raise NotImplementedError

    def tail_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        raise NotImplementedError

    def frames(self, messages: Sequence[Message]) -> bytes:
        """Several messages framed back to back, in order (one body write)."""
        return b"".join([self.frame(message) for message in messages])

    def message_events(self, message: Message, ctx: RequestContext) -> list[AsgiEvent]:
        """Events carrying one streamed response message (and the head, if not yet sent)."""
        events = [] if self.head_sent else [self.head_event(ctx)]
        events.append(body_event(self.frame(message), True))
        return events

    def messages_events(self, messages: Sequence[Message], ctx: RequestContext) -> list[AsgiEvent]:
        """Events carrying several streamed response messages in one body event."""
        events = [] if self.head_sent else [self.head_event(ctx)]
        events.append(body_event(self.frames(messages), True))
        return events

    def end_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        """Events that complete the response with a status (and the head, if not yet sent)."""
        events = [] if self.head_sent else [self.head_event(ctx)]
        events += self.tail_events(error, ctx)
        return events

    def unary_events(self, message: Message, ctx: RequestContext) -> list[AsgiEvent]:
        """Events for a single response message followed by success."""
        events = self.message_events(message, ctx)
        events += self.tail_events(None, ctx)
        return events

    # Shared helpers -------------------------------------------------------------

    def decompress(self, payload: bytes, compressed: bool) -> bytes:
        if not compressed:
            return payload
        if self.request_compressor is None:
            raise RpcError(
                Code.INTERNAL,
                "protocol error: compressed message received without a message encoding",
            )
        if not payload:  # an empty payload is never run through the decompressor
            return payload
        return self.request_compressor.decompress(payload, self.config.max_message_size)

    def compress(self, payload: bytes) -> tuple[bytes, bool]:
        compressor = self.response_compressor
        if compressor is None or len(payload) < max(1, self.config.compress_min_bytes):
            return payload, False
        return compressor.compress(payload), True
