"""A small async Connect client on httpx (HTTP/1.1 or HTTP/2; proto or JSON; gzip).

Works under trio (httpx runs on anyio). Bodies are read raw and decompressed here, with
the same bounds as the server, rather than by httpx.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from google.protobuf.message import Message

from connect_proto._errors import Code, RpcError
from connect_proto._headers import Headers
from connect_proto._wire.codec import CODECS, Codec
from connect_proto._wire.compression import COMPRESSORS, Compressor
from connect_proto._wire.connect import error_from_dict
from connect_proto._wire.envelope import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    EnvelopeDecoder,
    encode_envelope,
)

M = TypeVar("M", bound=Message)


@dataclass
class UnaryResult(Generic[M]):
    """A unary response with its metadata (``trailer-`` prefixes removed)."""

    message: M
    headers: Headers = field(default_factory=Headers)
    trailers: Headers = field(default_factory=Headers)


class ConnectClient:
    """Connect protocol client.

    ``path`` arguments are ``/pkg.Service/Method``; ``timeout_ms`` becomes
    ``Connect-Timeout-Ms``. ``timeout`` (seconds, or an ``httpx.Timeout`` with separate
    limits) bounds the HTTP exchange of a call without ``timeout_ms``. Failures raise
    ``RpcError``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        codec: str = "proto",
        http2: bool = False,
        compression: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify: ssl.SSLContext | str | bool = True,
        timeout: float | httpx.Timeout = 30.0,
        max_message_size: int = 4 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._codec: Codec = CODECS[codec]
        self._compressor: Compressor | None = COMPRESSORS[compression] if compression else None
        self._headers = dict(headers or {})
        self._max = max_message_size
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            http1=not http2 or base_url.startswith("https"),
            http2=http2,
            verify=verify,
            timeout=timeout,
            transport=transport,  # tests inject httpx.MockTransport here
        )
        self._accept = ",".join(COMPRESSORS)

    async def __aenter__(self) -> ConnectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _encode_request(
        self,
        request: Message,
        extra: Mapping[str, str] | None,
        timeout_ms: int | None,
        *,
        streaming: bool,
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of a call. A streaming call names its content type and
        encodings with ``connect+`` / ``connect-`` and wraps the body in an envelope."""
        prefix = "connect-" if streaming else ""
        headers = {
            **self._headers,
            "content-type": f"application/{'connect+' if streaming else ''}{self._codec.name}",
            "connect-protocol-version": "1",
            **(extra or {}),
        }
        if timeout_ms is not None:
            headers["connect-timeout-ms"] = str(timeout_ms)
        headers[prefix + "accept-encoding"] = self._accept
        body = self._codec.encode(request)
        flags = 0
        if self._compressor is not None and body:
            body = self._compressor.compress(body)
            headers[prefix + "content-encoding"] = self._compressor.name
            flags = FLAG_COMPRESSED
        if streaming:
            body = encode_envelope(body, flags)
        return headers, body

    @asynccontextmanager
    async def _post(
        self,
        path: str,
        request: Message,
        headers: Mapping[str, str] | None,
        timeout_ms: int | None,
        *,
        streaming: bool,
    ) -> AsyncIterator[httpx.Response]:
        """POST one call; a transport failure (also while the body is read) is
        UNAVAILABLE."""
        hdrs, body = self._encode_request(request, headers, timeout_ms, streaming=streaming)
        try:
            async with self._http.stream(
                "POST", path, content=body, headers=hdrs, timeout=self._http_timeout(timeout_ms)
            ) as response:
                yield response
        except httpx.TransportError as exc:
            raise RpcError(Code.UNAVAILABLE, f"transport: {exc}") from exc

    def _http_timeout(self, timeout_ms: int | None) -> float | httpx.Timeout:
        # The server enforces the deadline; give it room to say so before we give up.
        return self._timeout if timeout_ms is None else timeout_ms / 1000 + 5.0

    async def unary(
        self,
        path: str,
        request: Message,
        response_type: type[M],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> M:
        result = await self.unary_call(
            path, request, response_type, headers=headers, timeout_ms=timeout_ms
        )
        return result.message

    async def unary_call(
        self,
        path: str,
        request: Message,
        response_type: type[M],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> UnaryResult[M]:
        """Like ``unary`` but also returns response headers and trailers."""
        async with self._post(path, request, headers, timeout_ms, streaming=False) as response:
            raw = bytearray()  # appending to bytes would copy the body once per chunk
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) > self._max * 2 + 1024:
                    raise RpcError(Code.RESOURCE_EXHAUSTED, "response too large")
        payload = self._inflate(bytes(raw), response.headers.get("content-encoding"))
        response_headers = Headers()
        trailers = Headers()
        for name, value in response.headers.multi_items():
            if name.lower().startswith("trailer-"):
                trailers.add(name[len("trailer-") :], value)
            else:
                response_headers.add(name, value)
        if response.status_code != 200:
            raise _error_from_response(response.status_code, response.headers, payload)
        return UnaryResult(self._codec.decode(payload, response_type), response_headers, trailers)

    def _inflate(self, data: bytes, encoding: str | None) -> bytes:
        if not data or encoding in (None, "", "identity"):
            return data
        compressor = COMPRESSORS.get(encoding)
        if compressor is None:
            raise RpcError(Code.INTERNAL, f"unknown response encoding {encoding!r}")
        return compressor.decompress(data, self._max)

    async def server_stream(
        self,
        path: str,
        request: Message,
        response_type: type[M],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> AsyncGenerator[M, None]:
        """Yield each response; raise RpcError on an end-stream error or a missing end."""
        async with self._post(path, request, headers, timeout_ms, streaming=True) as response:
            if response.status_code != 200:
                raw = await response.aread()
                raise _error_from_response(response.status_code, response.headers, raw)
            encoding = response.headers.get("connect-content-encoding")
            decoder = EnvelopeDecoder(self._max)
            ended = False
            async for chunk in response.aiter_raw():
                for flags, data in decoder.feed(chunk):
                    if ended:
                        raise RpcError(Code.INTERNAL, "data after the end-stream message")
                    if flags & FLAG_COMPRESSED:
                        data = self._inflate(data, encoding)
                    if flags & FLAG_END_STREAM:
                        ended = True
                        _raise_end_stream(data)
                        continue
                    yield self._codec.decode(data, response_type)
            decoder.close()
            if not ended:
                raise RpcError(Code.INTERNAL, "stream ended without an end-stream message")


def _error_from_response(status: int, headers: httpx.Headers, body: bytes) -> RpcError:
    fallback = Code.from_http_status(status)
    if headers.get("content-type", "").startswith("application/json"):
        try:
            return error_from_dict(json.loads(body), fallback)
        except ValueError:
            pass
    return RpcError(fallback, f"HTTP status {status}")


def _raise_end_stream(data: bytes) -> None:
    try:
        end: Any = json.loads(data)
    except ValueError:
        raise RpcError(Code.INTERNAL, "invalid end-stream message") from None
    if not isinstance(end, dict):
        raise RpcError(Code.INTERNAL, "invalid end-stream message")
    error = end.get("error")
    if error is not None:
        raise error_from_dict(error, Code.UNKNOWN)
