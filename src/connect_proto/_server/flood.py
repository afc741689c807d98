"""Per-connection limits on HTTP/2 frames that are cheap to send and costly to serve.

A client can make the server work without doing any itself: open a stream and reset it
at once (CVE-2023-44487, "rapid reset": each HEADERS starts a handler that the RST_STREAM
then cancels), or send PING, SETTINGS or empty DATA frames that the server must parse,
answer or account for (CVE-2019-9512, -9515, -9518). The stream limit does not help: a
reset stream no longer counts against SETTINGS_MAX_CONCURRENT_STREAMS.

``FloodMeter`` counts such frames per connection in fixed windows of ``window`` seconds;
past a limit the connection is closed with GOAWAY ENHANCE_YOUR_CALM (RFC 9113 5.4.1,
what Go, nginx and Netty do) and one warning is logged for the connection. The defaults
are far above what a well-behaved client sends (a gRPC client cancels a handful of calls
a second; keepalive pings come minutes apart) and far below an attack (one rapid-reset
connection was measured at about 19,000 resets a second):

- ``early_resets``: streams the client reset before the server sent response headers,
  past which the connection is closed if they are also more than ``early_reset_share``
  of the streams it opened in the window. A stream cancelled after its response started
  (a watch the client stops) is normal use and not counted; nor is a busy client whose
  calls time out now and then (the share), as in Envoy's premature-reset check. Netty's
  default is 200 resets per 30 s; this allows 200 early ones per 10 s.
- ``pings``: PING frames received while the server had sent no response bytes since
  the previous PING. Pings that accompany a transfer (gRPC's bandwidth probes) are not
  counted, as in grpc-go's ping enforcement.
- ``settings``: SETTINGS frames (a client sends one or two per connection).
- ``empty_data``: DATA frames with no payload that do not end the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class FloodLimits:
    """Per-connection HTTP/2 frame budgets within each ``window`` seconds."""

    window: float = 10.0
    early_resets: int = 200
    early_reset_share: float = 0.5
    pings: int = 100
    settings: int = 100
    empty_data: int = 1000

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError("window must be > 0")
        if not 0 <= self.early_reset_share < 1:
            raise ValueError("early_reset_share must be >= 0 and < 1")
        for name in ("early_resets", "pings", "settings", "empty_data"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class Frames(Enum):
    EARLY_RESET = "early_resets"
    PING = "pings"
    SETTINGS = "settings"
    EMPTY_DATA = "empty_data"


DESCRIPTIONS = {
    Frames.EARLY_RESET: "streams reset before a response",
    Frames.PING: "PINGs",
    Frames.SETTINGS: "SETTINGS frames",
    Frames.EMPTY_DATA: "empty DATA frames",
}


class FloodMeter:
    """Counts one connection's cheap frames; ``count`` says when a limit is passed.

    Plain state, no I/O: the protocol calls ``count`` for each such frame,
    ``stream_opened`` for each new stream and ``sent_response_bytes`` when it sends
    HEADERS or DATA for a stream.
    """

    __slots__ = ("_clock", "_counts", "_limits", "_opened", "_sent_since_ping", "_window_start")

    def __init__(self, limits: FloodLimits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._window_start = clock()
        self._counts = dict.fromkeys(Frames, 0)
        self._opened = 0  # streams opened in this window
        self._sent_since_ping = False

    def _tick(self) -> None:
        now = self._clock()
        if now - self._window_start >= self._limits.window:
            self._window_start = now
            self._counts = dict.fromkeys(Frames, 0)
            self._opened = 0

    def stream_opened(self) -> None:
        self._tick()
        self._opened += 1

    def sent_response_bytes(self) -> None:
        self._sent_since_ping = True

    def count(self, kind: Frames) -> str | None:
        """Record one frame; a reason to close the connection once over the limit."""
        if kind is Frames.PING:
            probing, self._sent_since_ping = self._sent_since_ping, False
            if probing:
                return None
        self._tick()
        count = self._counts[kind] = self._counts[kind] + 1
        limit: int = getattr(self._limits, kind.value)
        if count <= limit:
            return None
        if kind is Frames.EARLY_RESET and count <= self._opened * self._limits.early_reset_share:
            return None  # mostly answered streams: a client whose calls time out
        return f"more than {limit} {DESCRIPTIONS[kind]} in {self._limits.window:g}s"


__all__ = ["FloodLimits", "FloodMeter", "Frames"]
