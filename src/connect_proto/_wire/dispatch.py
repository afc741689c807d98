"""Request classification before any protocol runs (sans-IO).

Unknown path first (404, a mux's answer), then the check order of connect-go's
handler: bidi on HTTP/1 (505), HTTP method (405), content type (415), GET with a body
(415), then the transport checks for gRPC (HTTP/2 and ``te: trailers``). Everything
after that is reported in the protocol's own error format by a ``ServerCall``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from connect_proto._errors import Code, RpcError
from connect_proto._headers import Headers
from connect_proto._service import MethodKind, RpcRoute
from connect_proto._types import RawHeaders
from connect_proto._wire.codec import CODECS, Codec
from connect_proto._wire.connect import (
    STREAM_CONTENT_TYPES,
    UNARY_CONTENT_TYPES,
    ConnectStreamCall,
    ConnectUnaryCall,
    error_json,
)
from connect_proto._wire.grpc import (
    GRPC_CONTENT_TYPES,
    GRPC_WEB_CONTENT_TYPES,
    GRPC_WEB_TEXT_CONTENT_TYPES,
    GrpcCall,
    GrpcWebCall,
    GrpcWebTextCall,
)
from connect_proto._wire.protocol import CallRequest, ServerCall


@dataclass(frozen=True, slots=True)
class Binding:
    """What a content type selects: the protocol, its codec, and which methods it fits."""

    call_type: type[ServerCall]
    codec: Codec
    unary_only: bool = False
    streaming_only: bool = False
    http2_only: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """A response decided before any protocol ran."""

    status: int
    headers: RawHeaders
    body: bytes = b""
    close: bool = False  # ask for the connection to be closed (HTTP/1.1)


@dataclass(frozen=True, slots=True)
class Accepted:
    call_type: type[ServerCall]
    request: CallRequest


def build_bindings(codecs: Mapping[str, Codec] = CODECS) -> dict[str, Binding]:
    bindings: dict[str, Binding] = {}
    for media, codec in UNARY_CONTENT_TYPES.items():
        bindings[media] = Binding(ConnectUnaryCall, codecs[codec], unary_only=True)
    for media, codec in STREAM_CONTENT_TYPES.items():
        bindings[media] = Binding(ConnectStreamCall, codecs[codec], streaming_only=True)
    for media, codec in GRPC_CONTENT_TYPES.items():
        bindings[media] = Binding(GrpcCall, codecs[codec], http2_only=True)
    for media, codec in GRPC_WEB_CONTENT_TYPES.items():
        bindings[media] = Binding(GrpcWebCall, codecs[codec])
    for media, codec in GRPC_WEB_TEXT_CONTENT_TYPES.items():
        bindings[media] = Binding(GrpcWebTextCall, codecs[codec])
    return bindings


# Clients send one of a handful of content types; memoised so the hot path does not
# re-split the same string per request. Bounded: the header is client-controlled.
@functools.lru_cache(maxsize=256)
def parse_content_type(value: str) -> tuple[str, str] | None:
    """(media type, value to echo) or None when a parameter makes it unusable.

    Parameters are dropped, except that JSON may carry ``charset=utf-8``.
    """
    media, _, params = value.partition(";")
    media = media.strip().lower()
    echo = media
    for param in params.split(";"):
        name, _, pvalue = param.partition("=")
        name = name.strip().lower()
        if name == "charset":
            charset = pvalue.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                return None
            if media.endswith("json"):
                echo = f"{media}; charset=utf-8"
    return media, echo


def _connect_error(status: int, error: RpcError) -> Reject:
    return Reject(status, [(b"content-type", b"application/json")], error_json(error))


class Dispatcher:
    """Routes and content types, resolved at start-up; ``classify`` runs per request."""

    def __init__(self, routes: Mapping[str, RpcRoute], bindings: Mapping[str, Binding]) -> None:
        self._routes = dict(routes)
        self._bindings = dict(bindings)
        self._accept_post = ", ".join(sorted(self._bindings)).encode()

    @property
    def routes(self) -> Mapping[str, RpcRoute]:
        return self._routes

    def classify(
        self,
        method: str,
        path: str,
        http_version: str,
        headers: Headers,
        query_string: bytes,
    ) -> Accepted | Reject:
        http1 = http_version.startswith("1")
        route = self._routes.get(path)
        if route is None:
            return _connect_error(404, RpcError(Code.UNIMPLEMENTED, f"unknown procedure {path}"))
        if http1 and route.kind is MethodKind.BIDI_STREAMING:
            return Reject(505, [(b"connection", b"close")], close=True)
        if method == "GET" and route.idempotent:
            return self._classify_get(route, http_version, headers, query_string)
        if method != "POST":
            allow = b"GET, POST" if route.idempotent else b"POST"
            return Reject(405, [(b"allow", allow)])
        content_type = headers.get("content-type")
        parsed = parse_content_type(content_type) if content_type is not None else None
        binding = self._bindings.get(parsed[0]) if parsed is not None else None
        if binding is None or parsed is None or not _fits(binding, route):
            return Reject(415, [(b"accept-post", self._accept_post)])
        if binding.http2_only:
            if http1:
                # No trailers on HTTP/1.1, so gRPC cannot work: refuse, never hang.
                return Reject(505, [(b"connection", b"close")], close=True)
            if "trailers" not in headers.get_all("te"):
                # hypercorn drops trailers unless a request header is exactly
                # "te: trailers", so the client could never see grpc-status. Refuse
                # clearly instead (400 + grpc-status in the headers).
                return Reject(
                    400,
                    [
                        (b"content-type", parsed[1].encode()),
                        (b"grpc-status", str(Code.INVALID_ARGUMENT.grpc).encode()),
                        (b"grpc-message", b'missing "te: trailers" request header'),
                    ],
                )
        request = CallRequest(
            route=route,
            http_method=method,
            http_version=http_version,
            headers=headers,
            query_string=query_string,
            content_type=parsed[1],
            codec=binding.codec,
        )
        return Accepted(binding.call_type, request)

    def _classify_get(
        self, route: RpcRoute, http_version: str, headers: Headers, query_string: bytes
    ) -> Accepted | Reject:
        encoding = ""
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name == "encoding":
                encoding = value
                break
        media = f"application/{encoding}"
        binding = self._bindings.get(media) if encoding else None
        if binding is None or binding.call_type is not ConnectUnaryCall:
            return Reject(415, [(b"accept-post", self._accept_post)])
        length = headers.get("content-length")
        if (
            length is not None and length.strip() not in ("", "0")
        ) or "transfer-encoding" in headers:
            return Reject(415, [(b"accept-post", self._accept_post)])
        request = CallRequest(
            route=route,
            http_method="GET",
            http_version=http_version,
            headers=headers,
            query_string=query_string,
            content_type=media,
            codec=binding.codec,
        )
        return Accepted(binding.call_type, request)


def _fits(binding: Binding, route: RpcRoute) -> bool:
    if binding.unary_only:
        return route.kind is MethodKind.UNARY
    if binding.streaming_only:
        return route.kind is not MethodKind.UNARY
    return True
