"""The Connect protocol: unary POST, unary GET, and enveloped streaming (sans-IO)."""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from google.protobuf.message import Message

from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError, detail_as_any, detail_type_name
from connect_proto._headers import Headers
from connect_proto._types import AsgiEvent, RawHeaders
from connect_proto._wire.b64 import decode_lenient, encode_unpadded
from connect_proto._wire.compression import (
    negotiate_response,
    parse_encoding_list,
    request_compressor,
)
from connect_proto._wire.envelope import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    EnvelopeDecoder,
    encode_envelope,
)
from connect_proto._wire.protocol import (
    ServerCall,
    body_event,
    encode_headers,
)
from connect_proto._wire.timeouts import parse_connect_timeout

# media type -> codec name; unary and streaming types are only valid for their method kinds.
UNARY_CONTENT_TYPES = {"application/proto": "proto", "application/json": "json"}
STREAM_CONTENT_TYPES = {"application/connect+proto": "proto", "application/connect+json": "json"}

_JSON_CT = (b"content-type", b"application/json")


# Error JSON ------------------------------------------------------------------------


def error_to_dict(error: RpcError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": error.code.connect_name}
    if error.message:
        out["message"] = error.message
    if error.details:
        details = []
        for detail in error.details:
            packed = detail_as_any(detail)
            details.append(
                {"type": detail_type_name(packed), "value": encode_unpadded(packed.value)}
            )
        out["details"] = details
    return out


def error_json(error: RpcError) -> bytes:
    # ensure_ascii=False keeps non-ASCII as raw UTF-8; json escapes control characters.
    return json.dumps(error_to_dict(error), separators=(",", ":"), ensure_ascii=False).encode()


def error_from_dict(value: object, fallback: Code) -> RpcError:
    """Parse a Connect error object (client side); tolerant of missing or odd fields."""
    from google.protobuf import any_pb2

    if not isinstance(value, dict) or not isinstance(value.get("code"), str):
        return RpcError(fallback, "")
    code = Code.from_connect_name(value["code"])
    message = value.get("message")
    details = []
    for item in value.get("details") or ():
        if not isinstance(item, dict):
            continue
        try:
            packed = any_pb2.Any(
                type_url=f"type.googleapis.com/{item['type']}",
                value=decode_lenient(str(item.get("value", ""))),
            )
        except (KeyError, ValueError):
            continue
        details.append(packed)
    return RpcError(code, message if isinstance(message, str) else "", tuple(details))


def end_stream_json(error: RpcError | None, trailers: Headers) -> bytes:
    out: dict[str, Any] = {}
    if error is not None:
        out["error"] = error_to_dict(error)
    if len(trailers):
        metadata: dict[str, list[str]] = {}
        for name, value in trailers:
            metadata.setdefault(name, []).append(value)
        out["metadata"] = metadata
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


# Shared negotiation -----------------------------------------------------------------


def _check_version(headers: Headers) -> None:
    version = headers.get("connect-protocol-version")
    if version is not None and version.strip() != "1":
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f'connect-protocol-version must be "1": got {version!r}',
        )


def _timeout(headers: Headers) -> float | None:
    value = headers.get("connect-timeout-ms")
    return None if value is None else parse_connect_timeout(value)


# Unary ------------------------------------------------------------------------------


def _negotiate_compression(call: ServerCall, prefix: str) -> None:
    """Set the call's compressors from ``<prefix>content-encoding`` and
    ``<prefix>accept-encoding`` (prefix "" for unary, "connect-" for streaming). The
    response compressor is set even when the request's encoding is refused."""
    headers = call.request.headers
    accept = headers.get_all(prefix + "accept-encoding")
    compressors = call.config.compressors
    try:
        call.request_compressor = request_compressor(
            headers.get(prefix + "content-encoding"), compressors
        )
    finally:
        call.response_compressor = negotiate_response(
            parse_encoding_list(accept) if accept else None,
            call.request_compressor,
            compressors,
        )


class ConnectUnaryCall(ServerCall):
    """Connect unary over POST (bare message body) or GET (message in the query)."""

    protocol: ClassVar[str] = "connect"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body = bytearray()
        self._get_payload: bytes | None = None
        self._wire_limit = self.config.max_message_size

    def negotiate(self) -> float | None:
        headers = self.request.headers
        accept = headers.get_all("accept-encoding")
        compressors = self.config.compressors
        if self.request.http_method == "GET":
            params = {
                k.decode("latin-1"): v
                for k, v in reversed(parse_qsl(self.request.query_string, keep_blank_values=True))
            }  # reversed: the first occurrence of a parameter wins
            self.response_compressor = negotiate_response(
                parse_encoding_list(accept) if accept else [], None, compressors
            )
            connect = params.get("connect")
            if connect is not None and connect != b"v1":
                raise RpcError(Code.INVALID_ARGUMENT, f'connect must be "v1": got {connect!r}')
            compression = params.get("compression")
            self.request_compressor = request_compressor(
                None if compression is None else compression.decode("latin-1"), compressors
            )
            message = params.get("message")
            if message is None:
                raise RpcError(Code.INVALID_ARGUMENT, "missing message query parameter")
            if params.get("base64") == b"1":
                try:
                    self._get_payload = decode_lenient(message.decode("latin-1"), urlsafe=True)
                except ValueError as exc:
                    raise RpcError(Code.INVALID_ARGUMENT, f"message: {exc}") from None
            else:
                self._get_payload = message
        else:
            _check_version(headers)
            _negotiate_compression(self, "")
            if self.request_compressor is not None:
                # Compressed bytes may slightly exceed the uncompressed limit.
                self._wire_limit = self.config.max_message_size * 101 // 100 + 1024
            length = headers.get("content-length")
            if length is not None and length.strip().isdigit() and int(length) > self._wire_limit:
                # Trusted only to reject early; the running count in feed() is the real bound.
                raise RpcError(
                    Code.RESOURCE_EXHAUSTED,
                    f"request exceeds the message size limit {self.config.max_message_size}",
                )
        return _timeout(headers)

    def feed(self, data: bytes) -> list[Message]:
        if self._get_payload is not None:
            if not data:
                return []
            raise RpcError(Code.INVALID_ARGUMENT, "GET request with a body")
        self._body += data
        if len(self._body) > self._wire_limit:
            raise RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"request exceeds the message size limit {self.config.max_message_size}",
            )
        return []

    def eof(self) -> list[Message]:
        payload = self._get_payload if self._get_payload is not None else bytes(self._body)
        self._body = bytearray()
        if payload and self.request_compressor is not None:
            payload = self.request_compressor.decompress(payload, self.config.max_message_size)
        elif len(payload) > self.config.max_message_size:
            raise RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"message size {len(payload)} exceeds the limit {self.config.max_message_size}",
            )
        return [self.request.codec.decode(payload, self.request.route.input_type)]

    def _common_headers(self) -> RawHeaders:
        raw: RawHeaders = [(b"accept-encoding", self.config.accept_encoding.encode())]
        if self.request.http_method == "GET":
            raw.append((b"vary", b"Accept-Encoding"))
        return raw

    def unary_events(self, message: Message, ctx: RequestContext) -> list[AsgiEvent]:
        body, compressed = self.compress(self.request.codec.encode(message))
        raw: RawHeaders = [(b"content-type", self.request.content_type.encode())]
        raw += self._common_headers()
        if compressed:
            assert self.response_compressor is not None
            raw.append((b"content-encoding", self.response_compressor.name.encode()))
        raw += encode_headers(ctx.response_headers)
        raw += encode_headers(ctx.response_trailers, "trailer-")
        raw.append((b"content-length", str(len(body)).encode()))
        return [
            {"type": "http.response.start", "status": 200, "headers": raw},
            body_event(body, False),
        ]

    def end_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        if error is None:  # unary success always goes through unary_events
            error = RpcError(Code.INTERNAL, "handler returned no response")
        raw: RawHeaders = [_JSON_CT, *self._common_headers()]
        raw += encode_headers(ctx.response_headers)
        raw += encode_headers(ctx.response_trailers, "trailer-")
        # Error bodies stay uncompressed: simplest, and every client copes.
        body = error_json(error)
        raw.append((b"content-length", str(len(body)).encode()))
        return [
            {"type": "http.response.start", "status": error.code.http_status, "headers": raw},
            body_event(body, False),
        ]

    def message_events(self, message: Message, ctx: RequestContext) -> list[AsgiEvent]:
        raise AssertionError("Connect unary content types never reach streaming methods")


# Streaming --------------------------------------------------------------------------


class ConnectStreamCall(ServerCall):
    """Connect streaming: enveloped request and response, JSON end-stream message."""

    protocol: ClassVar[str] = "connect"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decoder = EnvelopeDecoder(self.config.max_message_size)

    def negotiate(self) -> float | None:
        headers = self.request.headers
        _check_version(headers)
        _negotiate_compression(self, "connect-")
        return _timeout(headers)

    def _messages(self, envelopes: list[Any]) -> list[Message]:
        out: list[Message] = []
        codec = self.request.codec
        input_type = self.request.route.input_type
        for flags, payload in envelopes:
            if flags & ~FLAG_COMPRESSED:
                raise RpcError(
                    Code.INVALID_ARGUMENT, f"protocol error: invalid envelope flags {flags:#04x}"
                )
            data = self.decompress(payload, bool(flags & FLAG_COMPRESSED))
            out.append(codec.decode(data, input_type))
        return out

    def feed(self, data: bytes) -> list[Message]:
        return self._messages(self._decoder.feed(data))

    def eof(self) -> list[Message]:
        self._decoder.close()
        return []

    def head_event(self, ctx: RequestContext) -> AsgiEvent:
        raw: RawHeaders = [
            (b"content-type", self.request.content_type.encode()),
            (b"connect-accept-encoding", self.config.accept_encoding.encode()),
        ]
        if self.response_compressor is not None:
            raw.append((b"connect-content-encoding", self.response_compressor.name.encode()))
        raw += encode_headers(ctx.response_headers)
        return {"type": "http.response.start", "status": 200, "headers": raw}

    def frame(self, message: Message) -> bytes:
        payload, compressed = self.compress(self.request.codec.encode(message))
        return encode_envelope(payload, FLAG_COMPRESSED if compressed else 0)

    def tail_events(self, error: RpcError | None, ctx: RequestContext) -> list[AsgiEvent]:
        end = encode_envelope(end_stream_json(error, ctx.response_trailers), FLAG_END_STREAM)
        return [body_event(end, False)]


__all__ = [
    "STREAM_CONTENT_TYPES",
    "UNARY_CONTENT_TYPES",
    "ConnectStreamCall",
    "ConnectUnaryCall",
    "end_stream_json",
    "error_from_dict",
    "error_json",
    "error_to_dict",
]
