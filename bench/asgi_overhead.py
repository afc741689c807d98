#!/usr/bin/env python
"""CPU per call of the protocol layer alone: ``ConnectApp`` driven in-process, no sockets.

The ASGI ``receive`` hands over the request body at once and ``send`` only counts the
events, so what is timed is our own work per call: dispatch, the runner, encoding and
the handler (``TestServiceImpl``: Echo, and Count for a stream of N messages, sent one
by one or, as a watch snapshot is, with ``send.many`` where the layer has it), with the
ASGI lifespan running as under a server. The load generator and hypercorn are not
in the figure; compare two checkouts on the same machine at the same time::

    python bench/asgi_overhead.py
    PYTHONPATH=/other/checkout/src python bench/asgi_overhead.py   # another version
    python bench/asgi_overhead.py --calls 50000 --rounds 5

Printed per case: median over rounds of process CPU µs per call, and ASGI send events
per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "tests" / "support" / "gen"))

from testsvc.v1 import test_pb2  # noqa: E402
from testsvc_impl import TEST_SERVICE, TestServiceImpl  # noqa: E402

from connect_proto._app.app import ConnectApp  # noqa: E402
from connect_proto._wire.envelope import encode_envelope  # noqa: E402

ECHO = "/testsvc.v1.TestService/Echo"
COUNT = "/testsvc.v1.TestService/Count"


class BatchingService(TestServiceImpl):
    """Count sends its messages in one ``send.many`` (one by one without it)."""

    async def count(self, request: Any, ctx: Any, send: Any) -> None:
        messages = [test_pb2.CountResponse(number=n) for n in range(1, request.count + 1)]
        many = getattr(send, "many", None)
        if many is not None:
            await many(messages)
        else:
            for message in messages:
                await send(message)


def _scope(path: str, content_type: bytes, extra: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", content_type), (b"te", b"trailers"), *extra],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


def cases(stream_messages: int) -> dict[str, tuple[dict[str, Any], bytes, bool]]:
    echo = test_pb2.EchoRequest(message="hello").SerializeToString()
    count = test_pb2.CountRequest(count=stream_messages).SerializeToString()
    connect_count = _scope(COUNT, b"application/connect+proto", [])
    grpc_count = _scope(COUNT, b"application/grpc", [])
    n = stream_messages
    return {
        "connect unary Echo": (_scope(ECHO, b"application/proto", []), echo, False),
        "grpc unary Echo": (
            _scope(ECHO, b"application/grpc", []),
            encode_envelope(echo, 0),
            False,
        ),
        f"connect stream {n} x send": (connect_count, encode_envelope(count, 0), False),
        f"grpc stream {n} x send": (grpc_count, encode_envelope(count, 0), False),
        f"connect stream {n} send.many": (connect_count, encode_envelope(count, 0), True),
        f"grpc stream {n} send.many": (grpc_count, encode_envelope(count, 0), True),
    }


async def run_case(
    app: ConnectApp, scope: dict[str, Any], body: bytes, calls: int
) -> tuple[float, float]:
    events = 0
    request = {"type": "http.request", "body": body, "more_body": False}
    never = trio.Event()

    async def send(event: dict[str, Any]) -> None:
        nonlocal events
        events += 1

    started = time.process_time()
    for _ in range(calls):
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return request
            await never.wait()
            return {"type": "http.disconnect"}

        await app(scope, receive, send)
    return (time.process_time() - started) / calls * 1e6, events / calls


async def main(args: argparse.Namespace) -> None:
    app = ConnectApp(services=[(TEST_SERVICE, TestServiceImpl())])
    # Streams watch from a nursery of their own with or without a lifespan.
    batching = ConnectApp(services=[(TEST_SERVICE, BatchingService())])
    send_life, receive_life = trio.open_memory_channel[dict[str, Any]](1)
    to_app, from_test = trio.open_memory_channel[dict[str, Any]](1)

    async def life_send(event: dict[str, Any]) -> None:
        await send_life.send(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, from_test.receive, life_send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await receive_life.receive())["type"] == "lifespan.startup.complete"
        results: dict[str, list[float]] = {}
        per_call_events: dict[str, float] = {}
        all_cases = cases(args.stream_messages)
        for scope, body, many in all_cases.values():
            await run_case(batching if many else app, scope, body, min(args.calls, 2000))
        for _ in range(args.rounds):
            for name, (scope, body, many) in all_cases.items():
                us, events = await run_case(batching if many else app, scope, body, args.calls)
                results.setdefault(name, []).append(us)
                per_call_events[name] = events
        await to_app.send({"type": "lifespan.shutdown"})
        await receive_life.receive()
    import connect_proto

    print(f"connect_proto from {Path(connect_proto.__file__).parent}")
    for name, values in results.items():
        print(
            f"{name:28} {statistics.median(values):8.1f} µs/call  "
            f"{per_call_events[name]:4.1f} send events/call"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-messages", type=int, default=7)
    trio.run(main, parser.parse_args())
