"""What a handler sees of its call: headers in, headers and trailers out, the deadline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from connect_proto._headers import Headers


@dataclass
class RequestContext:
    """Per-call state handed to every handler.

    ``deadline`` is in ``trio.current_time()`` terms (inf when the client set none);
    the protocol layer enforces it with a cancel scope, so handlers only read it to
    propagate it.
    """

    method: str  # "/pkg.Service/Method"
    protocol: str  # "connect", "grpc" or "grpc-web"
    request_headers: Headers
    response_headers: Headers = field(default_factory=Headers)
    response_trailers: Headers = field(default_factory=Headers)
    deadline: float = math.inf
    peer: tuple[str, int] | None = None
    # Taken from the client's request-id header when valid, else generated; "" when the
    # app has request ids turned off. Echoed in the response headers.
    request_id: str = ""
    # Who the caller is, as set by an authenticating interceptor (the token's name).
    principal: str | None = None

    def time_remaining(self) -> float | None:
        """Seconds left until the deadline, or None when there is none."""
        if math.isinf(self.deadline):
            return None
        return max(0.0, self.deadline - trio.current_time())
