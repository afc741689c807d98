"""``send.many`` (several stream messages in one body event) and the leaner unary answers."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from asgi_driver import Response, call_app
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._wire.envelope import encode_envelope

COUNT = "/testsvc.v1.TestService/Count"
ECHO = "/testsvc.v1.TestService/Echo"


class ManyService(TestServiceImpl):
    """Count sends 1..n in one ``send.many``, then n+1 alone, then an empty ``many``."""

    async def count(self, request: Any, ctx: Any, send: Any) -> None:
        await send.many([test_pb2.CountResponse(number=n) for n in range(1, request.count + 1)])
        await send(test_pb2.CountResponse(number=request.count + 1))
        await send.many([])


class Finished:
    def __init__(self) -> None:
        self.outcomes: list[Any] = []

    def call_started(self, route: Any, ctx: Any) -> None:
        pass

    def call_finished(self, route: Any, ctx: Any, outcome: Any) -> None:
        self.outcomes.append(outcome)


def body_events(response: Response) -> list[bytes]:
    return [e["body"] for e in response.events if e["type"] == "http.response.body"]


@pytest.mark.parametrize(
    "content_type", ["application/connect+proto", "application/grpc", "application/grpc-web"]
)
async def test_many_writes_the_messages_in_order_in_one_body_event(content_type: str) -> None:
    observer = Finished()
    app = ConnectApp(services=[(TEST_SERVICE, ManyService())], observers=[observer])
    request = encode_envelope(test_pb2.CountRequest(count=5).SerializeToString(), 0)
    r = await call_app(
        app,
        path=COUNT,
        headers=[("content-type", content_type), ("te", "trailers")],
        body=request,
    )
    assert r.status == 200
    numbers = [
        test_pb2.CountResponse.FromString(payload).number
        for flags, payload in r.envelopes()
        if flags in (0, 1)
    ]
    assert numbers == [1, 2, 3, 4, 5, 6]
    first = body_events(r)[0]
    assert len(first) == 5 * len(encode_envelope(b"\x08\x01", 0))  # all five at once
    assert observer.outcomes[0].messages_sent == 6


async def test_many_refuses_a_message_of_the_wrong_type() -> None:
    class Wrong(TestServiceImpl):
        async def count(self, request: Any, ctx: Any, send: Any) -> None:
            await send.many([test_pb2.CountResponse(number=1), test_pb2.EchoResponse()])

    app = ConnectApp(services=[(TEST_SERVICE, Wrong())])
    r = await call_app(
        app,
        path=COUNT,
        headers=[("content-type", "application/grpc"), ("te", "trailers")],
        body=encode_envelope(test_pb2.CountRequest(count=1).SerializeToString(), 0),
    )
    assert r.trailer("grpc-status") == "13"  # INTERNAL, and nothing half-written
    assert [flags for flags, _ in r.envelopes()] == []


async def test_grpc_unary_answer_is_head_body_trailers() -> None:
    app = ConnectApp(services=[(TEST_SERVICE, TestServiceImpl())])
    r = await call_app(
        app,
        path=ECHO,
        headers=[("content-type", "application/grpc"), ("te", "trailers")],
        body=encode_envelope(test_pb2.EchoRequest(message="hi").SerializeToString(), 0),
    )
    assert [e["type"] for e in r.events] == [
        "http.response.start",
        "http.response.body",
        "http.response.trailers",
    ]
    assert r.events[1]["more_body"] is False
    assert r.trailer("grpc-status") == "0"
    (_flags, payload), *_ = r.envelopes()
    assert test_pb2.EchoResponse.FromString(payload).message == "hi"


async def test_unary_call_without_a_nursery_still_ends_when_its_client_leaves() -> None:
    """With the lifespan running, a unary call has no watcher of its own: the app's
    sweeper starts one once the call has waited, and the disconnect cancels the handler."""
    impl = TestServiceImpl()
    app = ConnectApp(services=[(TEST_SERVICE, impl)])
    life_in, life_receive = trio.open_memory_channel[dict[str, Any]](1)
    life_out, life_events = trio.open_memory_channel[dict[str, Any]](1)
    sent: list[dict[str, Any]] = []
    body = test_pb2.SleepRequest(ms=600_000).SerializeToString()
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep(0.2)  # the client leaves while the handler sleeps
        return {"type": "http.disconnect"}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    scope = {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "scheme": "http",
        "path": "/testsvc.v1.TestService/Sleep",
        "query_string": b"",
        "headers": [(b"content-type", b"application/proto")],
        "client": ("127.0.0.1", 1),
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, life_receive.receive, life_out.send)
        await life_in.send({"type": "lifespan.startup"})
        assert (await life_events.receive())["type"] == "lifespan.startup.complete"
        with trio.fail_after(10):  # an end, not a speed: the sweeper's grace is 0.5 s
            await app(scope, receive, send)
        await life_in.send({"type": "lifespan.shutdown"})
        await life_events.receive()
    assert impl.cancelled == ["sleep"]
    assert sent == []  # the client is gone: nothing written
