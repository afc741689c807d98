"""``send.many`` (several stream messages in one body event) and the leaner unary answers."""

from __future__ import annotations

from typing import Any

import pytest
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
