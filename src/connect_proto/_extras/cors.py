"""Opt-in CORS for browser clients (connect-web, grpc-web): preflight and response headers.

Sans-IO: ``preflight`` returns the whole answer to an ``OPTIONS`` request and
``response_headers`` the headers to add to a real response; ``ConnectApp`` applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from connect_proto._headers import Headers
from connect_proto._types import RawHeaders

# What Connect, gRPC-Web and their browser clients send and need to read
# (https://connectrpc.com/docs/cors, "Configurations by protocol").
PROTOCOL_REQUEST_HEADERS = (
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "x-grpc-web",
    "x-user-agent",
)
PROTOCOL_RESPONSE_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
    "connect-content-encoding",
    "connect-accept-encoding",
    "content-encoding",
)


@dataclass(frozen=True)
class CorsPolicy:
    """Which origins may call, plus the application's own metadata names.

    ``allow_origins`` holds exact origins (``https://ui.example.com``) or ``"*"``.
    """

    allow_origins: Sequence[str]
    allow_headers: Sequence[str] = ()
    expose_headers: Sequence[str] = ()
    max_age: int = 7200
    _allow_headers: bytes = field(init=False, repr=False)
    _expose_headers: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Joined once: the header values are the same for every request.
        allow = ", ".join([*PROTOCOL_REQUEST_HEADERS, *self.allow_headers])
        expose = ", ".join([*PROTOCOL_RESPONSE_HEADERS, *self.expose_headers])
        object.__setattr__(self, "_allow_headers", allow.encode())
        object.__setattr__(self, "_expose_headers", expose.encode())

    def allowed_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if "*" in self.allow_origins or origin in self.allow_origins:
            return origin
        return None

    def is_preflight(self, method: str, headers: Headers) -> bool:
        return method == "OPTIONS" and "access-control-request-method" in headers

    def preflight(self, headers: Headers) -> tuple[int, RawHeaders]:
        """Status and headers answering a preflight (403 for a refused origin)."""
        origin = self.allowed_origin(headers.get("origin"))
        if origin is None:
            return 403, [(b"vary", b"Origin")]
        return 204, [
            (b"access-control-allow-origin", origin.encode("latin-1", "replace")),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", self._allow_headers),
            (b"access-control-max-age", str(self.max_age).encode()),
            (b"vary", b"Origin"),
        ]

    def response_headers(self, headers: Headers) -> RawHeaders:
        """Headers to add to an actual response (none for an unknown origin)."""
        origin = self.allowed_origin(headers.get("origin"))
        if origin is None:
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1", "replace")),
            (b"access-control-expose-headers", self._expose_headers),
            (b"vary", b"Origin"),
        ]
