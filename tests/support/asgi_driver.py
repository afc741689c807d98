"""An in-process ASGI driver: scripted receive, recorded and validated send. No sockets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from connect_proto._wire.envelope import EnvelopeDecoder


class AsgiProtocolViolation(AssertionError):
    """The app sent ASGI events in an order no server would accept."""


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    wants_trailers: bool = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode().lower() == name.lower():
                return value.decode("latin-1")
        return None

    def header_all(self, name: str) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k.decode().lower() == name.lower()]

    def trailer(self, name: str) -> str | None:
        for key, value in self.trailers:
            if key.decode().lower() == name.lower():
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def envelopes(self) -> list[tuple[int, bytes]]:
        decoder = EnvelopeDecoder(1 << 31)
        out = [(e.flags, e.payload) for e in decoder.feed(self.body)]
        decoder.close()
        return out


async def call_app(
    app: Any,
    *,
    path: str,
    method: str = "POST",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Sequence[bytes] = b"",
    query_string: bytes = b"",
    http_version: str = "2",
    disconnect_after_bodies: int | None = None,
    hang_limit: float = 5.0,
) -> Response:
    """Drive ``app`` through one HTTP request and return the validated response.

    ``disconnect_after_bodies``: deliver ``http.disconnect`` once the app has sent that
    many non-empty body events (simulates a client going away mid-stream).
    """
    chunks = [body] if isinstance(body, bytes) else list(body)
    if not chunks:
        chunks = [b""]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query_string,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 12345),
        "server": ("127.0.0.1", 80),
        "extensions": {"http.response.trailers": {}} if http_version != "1.1" else {},
    }
    response = Response()
    finished = trio.Event()
    disconnect = trio.Event()
    bodies_sent = 0

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        # After the body, the next event is a disconnect: when the client leaves, or
        # once the response is done (as servers report it).
        async with trio.open_nursery() as nursery:

            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait, finished)
            nursery.start_soon(wait, disconnect)
        return {"type": "http.disconnect"}

    async def send(event: dict[str, Any]) -> None:
        nonlocal bodies_sent
        response.events.append(event)
        kind = event["type"]
        if response.complete:
            raise AsgiProtocolViolation(f"{kind} after the response was complete")
        if kind == "http.response.start":
            if response.status:
                raise AsgiProtocolViolation("second http.response.start")
            status = event["status"]
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise AsgiProtocolViolation(f"bad status {status!r}")
            for name, value in event.get("headers", []):
                if not isinstance(name, bytes) or not isinstance(value, bytes):
                    raise AsgiProtocolViolation("header not bytes")
            response.status = status
            response.headers = list(event.get("headers", []))
            response.wants_trailers = bool(event.get("trailers", False))
        elif kind == "http.response.body":
            if not response.status:
                raise AsgiProtocolViolation("body before start")
            if response.wants_trailers and response.body is None:
                raise AsgiProtocolViolation("body after trailers")
            data = event.get("body", b"")
            response.body += data
            if data:
                bodies_sent += 1
                if disconnect_after_bodies is not None and bodies_sent >= disconnect_after_bodies:
                    disconnect.set()
            if not event.get("more_body", False) and not response.wants_trailers:
                response.complete = True
                finished.set()
        elif kind == "http.response.trailers":
            if not response.wants_trailers:
                raise AsgiProtocolViolation("trailers without trailers=True")
            if http_version == "1.1":
                raise AsgiProtocolViolation("trailers on HTTP/1.1")
            response.trailers += list(event.get("headers", []))
            if not event.get("more_trailers", False):
                response.complete = True
                finished.set()
        else:
            raise AsgiProtocolViolation(f"unknown event {kind}")

    with trio.fail_after(hang_limit):
        await app(scope, receive, send)
    if not response.complete and not disconnect.is_set():
        raise AsgiProtocolViolation("app returned without completing the response")
    return response
