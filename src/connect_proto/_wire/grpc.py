"""gRPC over HTTP/2 and gRPC-Web (binary and base64 text) (sans-IO).

gRPC ends with real HTTP/2 trailers. hypercorn 0.18 cannot produce a trailers-only
response, so every gRPC response is ``http.response.start`` (trailers=True), a final
body event, then ``http.response.trailers``. gRPC-Web puts the trailers in a 0x80 frame
at the end of the body instead, which works on HTTP/1.1 too.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message
from google.rpc import status_pb2

from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError, detail_as_any
from connect_proto._headers import Headers
from connect_proto._types import AsgiEvent, RawHeaders
from connect_proto._wire.b64 import encode_unpadded
from connect_proto._wire.compression import (
    negotiate_response,
    parse_encoding_list,
    request_compressor,
)
from connect_proto._wire.envelope import (
    FLAG_COMPRESSED,
    FLAG_TRAILER,
    EnvelopeDecoder,
    encode_envelope,
)
from connect_proto._wire.protocol import (
    ServerCall,
    body_event,
    encode_headers,
)
from connect_proto._wire.timeouts import parse_grpc_timeout

GRPC_CONTENT_TYPES = {
    "application/grpc": "proto",
    "application/grpc+proto": "proto",
    "application/grpc+json": "json",
}
GRPC_WEB_CONTENT_TYPES = {
    "application/grpc-web": "proto",
    "application/grpc-web+proto": "proto",
    "application/grpc-web+json": "json",
}
GRPC_WEB_TEXT_CONTENT_TYPES = {
    "application/grpc-web-text": "proto",
    "application/grpc-web-text+proto": "proto",
}


# Status rendering --------------------------------------------------------------------

_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> str:
    """grpc-message encoding: UTF-8, then %XX for bytes outside 0x20-0x7E and for '%'."""
    raw = message.encode("utf-8", "replace")
    if all(b in _UNRESERVED for b in raw):
        return message
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)


def percent_decode(value: str) -> str:
    """Inverse of percent_encode; malformed escapes are kept as they are, never an error."""
    if "%" not in value:
        return value
    raw = value.encode("latin-1", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def status_details_bin(error: RpcError) -> str:
    status = status_pb2.Status(code=error.code.grpc, message=error.message)
    status.details.extend(detail_as_any(d) for d in error.details)
    return encode_unpadded(status.SerializeToString())


def status_fields(error: RpcError | None, trailers: Headers) -> list[tuple[str, str]]:
    """The trailer block: grpc-status, grpc-message, grpc-status-details-bin, custom."""
    if error is None:
        fields = [("grpc-status", "0")]
    else:
        fields = [("grpc-status", str(error.code.grpc))]
        if error.message:
            fields.append(("grpc-message", percent_encode(error.message)))
        if error.details:
            fields.append(("grpc-status-details-bin", status_details_bin(error)))
    fields += trailers.items()
    return fields


def trailer_frame(fields: list[tuple[str, str]]) -> bytes:
    """A gRPC-Web trailer frame: 0x80, length, ``name: value\\r\\n`` lines."""
    block = "".join(f"{name.lower()}: {value}\r\n" for name, value in fields)
    return encode_envelope(block.encode("latin-1", "replace"), FLAG_TRAILER)


class Base64Decoder:
    """Incremental decoder for gRPC-Web text bodies: whole 4-char groups at a time.

    Clients may concatenate independently padded chunks, so each group is decoded alone
    whenever it carries padding.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + b"".join(data.split())
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        chunk = data[:usable]
        try:
            if b"=" not in chunk[:-4]:
                return base64.b64decode(chunk, validate=True)
            return b"".join(
                base64.b64decode(chunk[i : i + 4], validate=True) for i in range(0, usable, 4)
            )
        except (binascii.Error, ValueError):
            raise RpcError(Code.INVALID_ARGUMENT, "grpc-web-text: invalid base64 body") from None

    def close(self) -> None:
        if self._pending:
            raise RpcError(Code.INVALID_ARGUMENT, "grpc-web-text: truncated base64 body")


# Calls ------------------------------------------------------------------------------


class GrpcCall(ServerCall):
    """gRPC over HTTP/2: enveloped messages, status in HTTP/2 trailers."""

    protocol: ClassVar[str] = "grpc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decoder = EnvelopeDecoder(self.config.max_message_size)

    def negotiate(self) -> float | None:
        headers = self.request.headers
        accept = headers.get_all("grpc-accept-encoding")
        try:
            self.request_compressor = request_compressor(
                headers.get("grpc-encoding"), self.config.compressors
            )
        finally:
            # gRPC only compresses responses with what the client explicitly accepts.
            self.response_compressor = negotiate_response(
                parse_encoding_list(accept), None, self.config.compressors
            )
        timeout = headers.get("grpc-timeout")
        return None if timeout is None else parse_grpc_timeout(timeout)

    def _messages(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        codec = self.request.codec
        input_type = self.request.route.input_type
        for flags, payload in self._decoder.feed(data):
            if flags & ~FLAG_COMPRESSED:
                raise RpcError(Code.INTERNAL, f"protocol error: invalid message flags {flags:#04x}")
            out.append(codec.decode(self.decompress(payload, bool(flags)), input_type))
        return out

    def feed(self, data: bytes) -> list[Message]:
        return self._messages(data)

    def eof(self) -> list[Message]:
        self._decoder.close()
        return []

    def _head_headers(self, ctx: RequestContext) -> RawHeaders:
        raw: RawHeaders = [
            (b"content-type", self.request.content_type.encode()),
            (b"grpc-accept-encoding", self.config.accept_encoding.encode()),
        ]
        if self.response_compressor is not None:
            raw.append((b"grpc-encoding", self.response_compressor.name.encode()))
        raw += encode_headers(ctx.response_headers)
        return raw

    def head_event(self, ctx: RequestContext) -> AsgiEvent:
        return {
            "type": "http.response.start",
            "status": 200,
            "headers": self._head_headers(ctx),
            "trailers": True,
        }

    def frame(self, message: Message) -> bytes:
        payload, compressed = self.compress(self.request.codec.encode(message))
        return encode_envelope(payload, FLAG_COMPRESSED if compressed else 0)

    def _trailers_event(self, error: RpcError | None, ctx: RequestContext) -> AsgiEvent:
        fields = status_fields(error, ctx.response_trailers)
        return {
            "type": "http.response.trailers",
            "headers": encode_headers(Headers(fields)),
            "more_trailers": False,
        }

    def tail_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        return [body_event(b"", False), self._trailers_event(error, ctx)]

    def unary_events(self, message: Message, ctx: RequestContext) -> list[AsgiEvent]:
        # The message ends the body: three events, not an empty body event as well.
        events = [] if self.head_sent else [self.head_event(ctx)]
        events.append(body_event(self.frame(message), False))
        events.append(self._trailers_event(None, ctx))
        return events


class GrpcWebCall(GrpcCall):
    """gRPC-Web, binary: like gRPC, but the trailers travel in a 0x80 body frame."""

    protocol: ClassVar[str] = "grpc-web"

    def head_event(self, ctx: RequestContext) -> AsgiEvent:
        return {"type": "http.response.start", "status": 200, "headers": self._head_headers(ctx)}

    def _tail_frame(self, error: RpcError | None, ctx: RequestContext) -> bytes:
        return trailer_frame(status_fields(error, ctx.response_trailers))

    def tail_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        return [body_event(self._tail_frame(error, ctx), False)]

    def unary_events(self, message: Message, ctx: RequestContext) -> list[AsgiEvent]:
        # The message and the trailer frame in one body event.
        events = [] if self.head_sent else [self.head_event(ctx)]
        events.append(body_event(self.frames_and_tail([message], ctx), False))
        return events

    def frames_and_tail(self, messages: Sequence[Message], ctx: RequestContext) -> bytes:
        return self.frames(messages) + self._tail_frame(None, ctx)


class GrpcWebTextCall(GrpcWebCall):
    """gRPC-Web text: the binary body in base64, each flushed chunk encoded on its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._text = Base64Decoder()

    def feed(self, data: bytes) -> list[Message]:
        return self._messages(self._text.feed(data))

    def eof(self) -> list[Message]:
        self._text.close()
        return super().eof()

    def frame(self, message: Message) -> bytes:
        return base64.b64encode(super().frame(message))

    def frames_and_tail(self, messages: Sequence[Message], ctx: RequestContext) -> bytes:
        # Each frame in base64 on its own, the same bytes as one write per frame.
        return self.frames(messages) + base64.b64encode(self._tail_frame(None, ctx))

    def tail_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        return [body_event(base64.b64encode(self._tail_frame(error, ctx)), False)]
