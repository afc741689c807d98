"""Helpers for the server tests: an in-process server that is either ours
(``connect_proto._server.serve``) or stock hypercorn (``hypercorn.trio.serve``, none of our
classes), and a raw ``h2`` client over a trio socket.

Each fix has a test parametrized over both servers; on ``stock`` it is an expected failure
(``xfail(strict=True)``), so the day hypercorn fixes the bug the test XPASSes and fails,
and the fix can go.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio
from hypercorn.config import Config
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._server.serve import serve

STOCK = "stock"
OURS = "ours"


def stock_and_ours(bug: str) -> pytest.MarkDecorator:
    """Parametrize ``server_kind``: ``stock`` expected to fail with ``bug``, ``ours`` not."""
    return pytest.mark.parametrize(
        "server_kind",
        [pytest.param(STOCK, marks=pytest.mark.xfail(strict=True, reason=bug)), OURS],
    )


def make_app() -> ConnectApp:
    return ConnectApp([(TEST_SERVICE, TestServiceImpl())])


def with_lifespan(handler: Any) -> Any:
    """An ASGI app that answers the lifespan protocol and hands HTTP to ``handler``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await handler(scope, receive, send)

    return app


def plain_app(delay: float = 0.0) -> Any:
    """An ASGI app that reads the whole request body, waits ``delay`` seconds (not
    watching for a disconnect), then answers 200 "ok"."""

    async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        await trio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return with_lifespan(answer)


class Server:
    """A server running in a task of the test; ``error`` is what ended it, if anything."""

    def __init__(self, kind: str, app: Any, config: Config, **serve_kwargs: Any) -> None:
        self.kind = kind
        self.app = app
        self.config = config
        self.serve_kwargs = serve_kwargs
        self.port = 0
        self.error: BaseException | None = None
        self.done = trio.Event()
        self._scope = trio.CancelScope()
        self._shutdown = trio.Event()

    async def start(self, nursery: trio.Nursery) -> Server:
        self.port = await nursery.start(self._run)
        return self

    async def _run(self, task_status: trio.TaskStatus[int]) -> None:
        try:
            with self._scope:
                if self.kind == OURS:
                    await serve(self.app, self.config, task_status=task_status, **self.serve_kwargs)
                else:
                    from hypercorn.trio import serve as hypercorn_serve

                    await hypercorn_serve(
                        self.app,
                        self.config,
                        shutdown_trigger=self._shutdown.wait,
                        task_status=_PortOf(task_status),  # type: ignore[arg-type]
                    )
        except Exception as exc:  # what a crash looks like to the process
            self.error = exc
        finally:
            self.done.set()

    def begin_shutdown(self) -> None:
        """What SIGTERM does in the service: ``serve`` is cancelled."""
        if self.kind == OURS:
            self._scope.cancel()
        else:  # as our serve does it, with hypercorn's own shutdown
            if hasattr(self.app, "begin_shutdown"):
                self.app.begin_shutdown()
            self._shutdown.set()

    def stop_now(self) -> None:
        self._scope.cancel()

    def check(self) -> None:
        assert self.error is None, f"server ended with {self.error!r}"
        assert not self.done.is_set(), "server ended"


class _PortOf:
    def __init__(self, inner: trio.TaskStatus[int]) -> None:
        self._inner = inner

    def started(self, binds: list[str] | None = None) -> None:
        self._inner.started(int((binds or ["http://0:0"])[0].rsplit(":", 1)[1]))


def grpc_headers(path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":path", path),
        (":scheme", "http"),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def connect_headers(path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":path", path),
        (":scheme", "http"),
        (":authority", "x"),
        ("content-type", "application/proto"),
    ]


class Peer:
    """A raw HTTP/2 client: an ``h2`` state machine over a trio socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> Peer:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def events(self) -> list[h2.events.Event]:
        """The events of one read; [] once the server closed the connection."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.h2.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return events

    async def until(self, done: Any, limit: float = 10) -> list[h2.events.Event]:
        """Every event read until ``done(events_so_far)`` or the connection closes."""
        seen: list[h2.events.Event] = []
        with trio.fail_after(limit):
            while not done(seen) and not self.closed:
                seen.extend(await self.events())
        return seen

    async def aclose(self) -> None:
        await self.stream.aclose()


def of_type(events: Iterable[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def unary_ok(port: int) -> bool:
    """True when a Connect unary Echo over a new h2c connection gets HTTP 200."""
    from testsvc.v1 import test_pb2

    with trio.move_on_after(5):
        try:
            peer = await Peer.connect(port)
        except OSError:
            return False
        try:
            sid = peer.h2.get_next_available_stream_id()
            peer.h2.send_headers(sid, connect_headers("/testsvc.v1.TestService/Echo"))
            body = test_pb2.EchoRequest(message="ok").SerializeToString()
            peer.h2.send_data(sid, body, end_stream=True)
            await peer.flush()
            events = await peer.until(lambda seen: of_type(seen, h2.events.StreamEnded))
            responses = of_type(events, h2.events.ResponseReceived)
            return bool(responses) and dict(responses[0].headers)[b":status"] == b"200"
        finally:
            await peer.aclose()
    return False
