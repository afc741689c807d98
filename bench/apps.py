"""ASGI applications for the benchmark, loaded by hypercorn from an import path.

hypercorn evaluates the part after the colon, so factories are called in place and
loading one app never imports the other stack:

- ``hypercorn -k trio bench.apps:ours_app()``: connect_proto._app.app.ConnectApp serving
  tests/support/testsvc_impl.TestServiceImpl.
- ``hypercorn -k asyncio bench.apps:official_app()``: the PyPI ``connectrpc`` server, its
  generated ``TestServiceASGIApplication`` with the asyncio implementation below.
- ``hypercorn -k trio|asyncio bench.apps:bare``: a constant 200 with a fixed body; the
  ceiling of hypercorn itself (it awaits nothing but ASGI receive/send).
  ``bench.apps:bare_patched()`` is the same app on connect_proto's server (the
  hypercorn fixes), i.e. the ceiling of the server ``ours`` actually runs on.
- ``bench.apps:ours_nocoal()``, ``bench.apps:bare_nocoal()``: the same two with the
  write coalescing of the fixes (fix 6) switched off, to measure it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests" / "support" / "gen", ROOT / "tests" / "support", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BARE_BODY = b"\n\x05hello"  # what EchoResponse(message="hello") serialises to


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with 200 and a constant body after reading the request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/proto")],
        }
    )
    await send({"type": "http.response.body", "body": BARE_BODY})


def _on_connect_proto_server(coalesce_writes: bool = True) -> None:
    """Run this hypercorn worker on connect_proto's server, as ``connect_proto.serve`` does.

    ``python -m hypercorn -k trio`` evaluates the app expression in the worker process
    just before calling ``hypercorn.trio.run.worker_serve``; rebinding that one name makes
    the worker run ``connect_proto._server.worker.worker_serve`` (the connection classes
    with the hypercorn fixes) instead. Benchmark apps only: the library patches nothing.
    """
    import hypercorn.trio.run

    from connect_proto._server.protocol import ServerOptions
    from connect_proto._server.worker import worker_serve

    options = ServerOptions(coalesce_writes=coalesce_writes)
    hypercorn.trio.run.worker_serve = partial(worker_serve, options=options)  # type: ignore[assignment]


def bare_patched() -> Any:
    """``bare`` on the server the project runs (connect_proto's hypercorn fixes), so that
    ``ours`` is compared with the same server underneath."""
    _on_connect_proto_server()
    return bare


def bare_nocoal() -> Any:
    """``bare_patched()`` without write coalescing (``serve(coalesce_writes=False)``)."""
    _on_connect_proto_server(coalesce_writes=False)
    return bare


def ours_nocoal() -> Any:
    """``ours_app()`` without write coalescing."""
    app = ours_app()
    _on_connect_proto_server(coalesce_writes=False)
    return app


def ours_app() -> Any:
    from testsvc_impl import TEST_SERVICE, TestServiceImpl

    from connect_proto._app.app import ConnectApp

    # On the server a deployment gets from connect_proto.serve.
    _on_connect_proto_server()
    return ConnectApp(services=[(TEST_SERVICE, TestServiceImpl())])


class OfficialTestService:
    """asyncio twin of tests/support/testsvc_impl.TestServiceImpl for the ``connectrpc`` server."""

    async def echo(self, request: Any, ctx: Any) -> Any:
        from testsvc.v1 import test_pb2

        for h in request.response_headers:
            ctx.response_headers.add(h.name, h.value)
        for h in request.response_trailers:
            ctx.response_trailers.add(h.name, h.value)
        timeout_ms = ctx.timeout_ms
        return test_pb2.EchoResponse(
            message=request.message,
            payload=request.payload,
            request_headers=[
                test_pb2.Header(name=k, value=v) for k, v in ctx.request_headers.allitems()
            ],
            timeout_seconds=(timeout_ms or 0) / 1000,
            protocol="official",
        )

    async def count(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError
        from testsvc.v1 import test_pb2

        for number in range(1, request.count + 1):
            if request.delay_ms:
                await asyncio.sleep(request.delay_ms / 1000)
            yield test_pb2.CountResponse(number=number)
        if request.fail_code:
            raise ConnectError(list(Code)[request.fail_code - 1], request.fail_message)

    async def fail(self, request: Any, ctx: Any) -> Any:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        for h in request.response_headers:
            ctx.response_headers.add(h.name, h.value)
        for h in request.response_trailers:
            ctx.response_trailers.add(h.name, h.value)
        # Details are left out: connectrpc 0.13 only packs protobuf-py messages.
        raise ConnectError(list(Code)[request.code - 1], request.message)

    async def get(self, request: Any, ctx: Any) -> Any:
        from testsvc.v1 import test_pb2

        return test_pb2.GetResponse(greeting=f"Hello, {request.name}!")

    async def sleep(self, request: Any, ctx: Any) -> Any:
        from testsvc.v1 import test_pb2

        timeout_ms = ctx.timeout_ms
        await asyncio.sleep(request.ms / 1000)
        return test_pb2.SleepResponse(timeout_seconds=(timeout_ms or 0) / 1000)


def official_app() -> Any:
    from servers import load_testsvc_connect

    stubs = load_testsvc_connect()
    # The generated Protocol supplies UNIMPLEMENTED for Sum and Chat.
    impl = type("Impl", (OfficialTestService, stubs.TestService), {})()
    return stubs.TestServiceASGIApplication(impl)
