"""The implementation of testsvc.v1.TestService used by protocol, interop and benchmark tests.

Behaviour is part of the test contract (other suites rely on it), so keep it stable:

- Echo: returns ``message`` and ``payload``, every request header in arrival order, the
  seconds left until the deadline (0 when none) and the protocol name; adds the requested
  response headers and trailers.
- Count: streams ``count`` messages numbered 1..count, sleeping ``delay_ms`` before each;
  then fails with ``fail_code`` (gRPC number) and ``fail_message`` when ``fail_code`` is set.
- Fail: fails with ``Code.from_grpc(code)``, ``message`` and the Any ``details``; adds the
  requested headers and trailers first.
- Get: ``greeting = "Hello, <name>!"`` (NO_SIDE_EFFECTS, so Connect GET works).
- Sum: client streaming; totals ``value`` and counts messages.
- Chat: bidi; answers each request with ``"echo: <text>"`` as it arrives.
- Sleep: sleeps ``ms`` milliseconds; reports the seconds left at the start (0 when none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import trio
from testsvc.v1 import test_pb2

from connect_proto import Code, RpcError
from connect_proto._context import RequestContext

Send = Callable[..., Awaitable[None]]


def _add(target: object, headers: Iterable[test_pb2.Header]) -> None:
    for header in headers:
        target.add(header.name, header.value)  # type: ignore[attr-defined]


class TestServiceImpl:
    """Handlers for testsvc.v1.TestService (see module docstring)."""

    __test__ = False  # not a pytest test class, despite the name

    # Counters tests read to prove cancellation reached the handler.
    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.started: list[str] = []

    async def echo(
        self, request: test_pb2.EchoRequest, ctx: RequestContext
    ) -> test_pb2.EchoResponse:
        _add(ctx.response_headers, request.response_headers)
        _add(ctx.response_trailers, request.response_trailers)
        remaining = ctx.time_remaining()
        return test_pb2.EchoResponse(
            message=request.message,
            payload=request.payload,
            request_headers=[
                test_pb2.Header(name=k, value=v) for k, v in ctx.request_headers.items()
            ],
            timeout_seconds=remaining or 0.0,
            protocol=ctx.protocol,
        )

    async def count(self, request: test_pb2.CountRequest, ctx: RequestContext, send: Send) -> None:
        _add(ctx.response_headers, request.response_headers)
        _add(ctx.response_trailers, request.response_trailers)
        self.started.append("count")
        try:
            for number in range(1, request.count + 1):
                if request.delay_ms:
                    await trio.sleep(request.delay_ms / 1000)
                await send(test_pb2.CountResponse(number=number))
        except trio.Cancelled:
            self.cancelled.append("count")
            raise
        if request.fail_code:
            raise RpcError(Code.from_grpc(request.fail_code), request.fail_message)

    async def fail(
        self, request: test_pb2.FailRequest, ctx: RequestContext
    ) -> test_pb2.FailResponse:
        _add(ctx.response_headers, request.response_headers)
        _add(ctx.response_trailers, request.response_trailers)
        raise RpcError(Code.from_grpc(request.code), request.message, tuple(request.details))

    async def get(self, request: test_pb2.GetRequest, ctx: RequestContext) -> test_pb2.GetResponse:
        return test_pb2.GetResponse(greeting=f"Hello, {request.name}!")

    async def sum(
        self, requests: AsyncIterator[test_pb2.SumRequest], ctx: RequestContext
    ) -> test_pb2.SumResponse:
        total = 0
        count = 0
        async for request in requests:
            total += request.value
            count += 1
        return test_pb2.SumResponse(total=total, count=count)

    async def chat(
        self, requests: AsyncIterator[test_pb2.ChatRequest], ctx: RequestContext, send: Send
    ) -> None:
        async for request in requests:
            await send(test_pb2.ChatResponse(text=f"echo: {request.text}"))

    async def sleep(
        self, request: test_pb2.SleepRequest, ctx: RequestContext
    ) -> test_pb2.SleepResponse:
        remaining = ctx.time_remaining()
        self.started.append("sleep")
        try:
            await trio.sleep(request.ms / 1000)
        except trio.Cancelled:
            self.cancelled.append("sleep")
            raise
        return test_pb2.SleepResponse(timeout_seconds=remaining or 0.0)


# The descriptor to pass to ConnectApp together with a TestServiceImpl instance.
TEST_SERVICE = test_pb2.DESCRIPTOR.services_by_name["TestService"]
