"""Runs in .venv-sdk: the Connect stubs that ship inside flyteidl2
(``flyteidl2/actions/actions_service_connect.py``) on the connectrpc the SDK pins,
against a running Actions Service. All five RPCs, the error codes the SDK relies on,
for each protocol / codec / HTTP version / compression combination given.

Usage: python stubs_driver.py URL COMBO [COMBO ...]
COMBO = PROTOCOL-CODEC-HTTP[-COMPRESSION], e.g. connect-proto-h1, connect-json-h2-identity,
grpc-proto-h2, grpcweb-proto-h1; PROTOCOL connect|grpc|grpcweb, CODEC proto|json,
HTTP h1|h2 (h2 = h2c with prior knowledge on a plain port), COMPRESSION gzip (default) |
identity. Also ``sync-`` in front of a combo uses ``ActionsServiceClientSync``.

Prints one JSON line: {"versions": {...}, "results": {COMBO: "ok" | "<failure>"}}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from importlib.metadata import version

import pyqwest
from connectrpc.code import Code
from connectrpc.codec import proto_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.actions.actions_service_connect import (
    ActionsServiceClient,
    ActionsServiceClientSync,
)
from flyteidl2.common import identifier_pb2, phase_pb2
from flyteidl2.core import types_pb2

PROTOCOLS = {
    "connect": ProtocolType.CONNECT,
    "grpc": ProtocolType.GRPC,
    "grpcweb": ProtocolType.GRPC_WEB,
}
HTTP = {"h1": pyqwest.HTTPVersion.HTTP1, "h2": pyqwest.HTTPVersion.HTTP2}
P = phase_pb2


def aid(run: str, name: str) -> identifier_pb2.ActionIdentifier:
    return identifier_pb2.ActionIdentifier(
        run=identifier_pb2.RunIdentifier(org="o", project="p", domain="development", name=run),
        name=name,
    )


def task(run: str, name: str, parent: str | None = None) -> pb.EnqueueRequest:
    action = pb.Action(
        action_id=aid(run, name),
        input_uri=f"s3://bucket/{run}/{name}/inputs.pb",
        run_output_base=f"s3://bucket/{run}",
    )
    if parent:
        action.parent_action_name = parent
    action.task.spec.task_template.type = "python-task"
    action.task.spec.task_template.id.name = "mod.fn"
    action.task.spec.short_name = "fn"
    return pb.EnqueueRequest(action=action)


def condition(run: str, name: str, parent: str) -> pb.EnqueueRequest:
    req = pb.EnqueueRequest()
    req.action.action_id.CopyFrom(aid(run, name))
    req.action.parent_action_name = parent
    req.action.input_uri = f"s3://bucket/{run}/{name}/inputs.pb"
    req.action.run_output_base = f"s3://bucket/{run}"
    req.action.condition.name = "approve"
    req.action.condition.type.simple = types_pb2.BOOLEAN
    return req


def update(run: str, name: str, phase: int) -> pb.UpdateRequest:
    req = pb.UpdateRequest(action_id=aid(run, name), attempt=1)
    req.status.phase = phase
    req.status.attempts = 1
    return req


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


class Calls:
    """The same scenario over the async or the sync client."""

    def __init__(self, client, is_async: bool) -> None:
        self.client = client
        self.is_async = is_async

    async def __call__(self, method: str, req):
        fn = getattr(self.client, method)
        return await fn(req) if self.is_async else await asyncio.to_thread(fn, req)

    async def code_of(self, method: str, req) -> tuple[Code | None, str]:
        try:
            await self(method, req)
        except ConnectError as exc:
            return exc.code, exc.message
        return None, ""

    async def watch(self, req, want: int, until=None) -> list[pb.WatchForUpdatesResponse]:
        """The first ``want`` messages (``until(messages)`` runs after the first one,
        to cause the later ones), then the stream is closed."""
        out: list[pb.WatchForUpdatesResponse] = []
        if self.is_async:
            stream = self.client.watch_for_updates(req, timeout_ms=10_000)
            async for msg in stream:
                out.append(msg)
                if len(out) == 1 and until is not None:
                    await until()
                if len(out) >= want:
                    break
            await stream.aclose()
            return out

        loop = asyncio.get_running_loop()

        def run() -> None:
            stream = self.client.watch_for_updates(req, timeout_ms=10_000)
            for msg in stream:
                out.append(msg)
                if len(out) == 1 and until is not None:
                    asyncio.run_coroutine_threadsafe(until(), loop).result()
                if len(out) >= want:
                    break
            stream.close()

        await asyncio.to_thread(run)
        return out


async def scenario(calls: Calls, run: str) -> None:
    # Enqueue: a root, children (task and condition), idempotency, validation, parents.
    expect(await calls("enqueue", task(run, "a0")) == pb.EnqueueResponse(), "enqueue root")
    await calls("enqueue", task(run, "c1", "a0"))
    await calls("enqueue", condition(run, "cond", "a0"))
    code, msg = await calls.code_of("enqueue", task(run, "c1", "a0"))
    expect(code == Code.ALREADY_EXISTS, f"duplicate enqueue: {code} {msg}")
    code, msg = await calls.code_of("enqueue", task(run, "c9", "nope"))
    expect(code == Code.NOT_FOUND, f"missing parent: {code} {msg}")
    bad = task(run, "c8", "a0")
    bad.action.input_uri = ""
    code, msg = await calls.code_of("enqueue", bad)
    expect(code == Code.INVALID_ARGUMENT, f"invalid enqueue: {code} {msg}")

    # WatchForUpdates: the snapshot, the sentinel, then a live update caused meanwhile.
    async def move_c1() -> None:
        await calls("update", update(run, "c1", P.ACTION_PHASE_RUNNING))

    watch_req = pb.WatchForUpdatesRequest(parent_action_id=aid(run, "a0"))
    msgs = await calls.watch(watch_req, want=5, until=move_c1)
    kinds = [m.WhichOneof("message") for m in msgs]
    snapshot = {m.action_update.action_id.name: m.action_update.phase for m in msgs[:3]}
    expect(kinds[:4] == ["action_update"] * 3 + ["control_message"], f"watch kinds {kinds}")
    expect(msgs[3].control_message.sentinel, "sentinel")
    expect(snapshot.get("c1") == P.ACTION_PHASE_QUEUED, f"snapshot {snapshot}")
    expect("cond" in snapshot, f"snapshot {snapshot}")
    live = msgs[4].action_update
    expect((live.action_id.name, live.phase) == ("c1", P.ACTION_PHASE_RUNNING), f"live {live}")
    expect(live.output_uri.startswith("s3://bucket/"), f"output_uri {live.output_uri!r}")

    # Update: forward, and NOT_FOUND for an unknown action.
    await calls("update", update(run, "c1", P.ACTION_PHASE_SUCCEEDED))
    code, msg = await calls.code_of("update", update(run, "ghost", P.ACTION_PHASE_RUNNING))
    expect(code == Code.NOT_FOUND, f"update ghost: {code} {msg}")

    # Signal: the condition's value; wrong parent is NOT_FOUND.
    sig = pb.SignalRequest(action_id=aid(run, "cond"), parent_action_name="a0")
    sig.value.scalar.primitive.boolean = True
    expect(await calls("signal", sig) == pb.SignalResponse(), "signal")
    sig.parent_action_name = "other"
    code, msg = await calls.code_of("signal", sig)
    expect(code == Code.NOT_FOUND, f"signal wrong parent: {code} {msg}")

    # The signalled value and the final phases, as a fresh watcher sees them.
    msgs = await calls.watch(watch_req, want=3)
    seen = {
        m.action_update.action_id.name: m.action_update for m in msgs if m.HasField("action_update")
    }
    expect(seen["c1"].phase == P.ACTION_PHASE_SUCCEEDED, f"c1 {seen['c1']}")
    expect(seen["cond"].value.scalar.primitive.boolean is True, f"cond {seen['cond']}")

    # Abort: the child goes; a second abort is NOT_FOUND (the SDK's "already done").
    await calls("enqueue", task(run, "c2", "a0"))
    abort = pb.AbortRequest(action_id=aid(run, "c2"), reason="r")
    expect(await calls("abort", abort) == pb.AbortResponse(), "abort")
    code, msg = await calls.code_of("abort", abort)
    expect(code == Code.NOT_FOUND, f"abort again: {code} {msg}")

    # A request the IDL's rules reject, on the stream.
    code = None
    try:
        await calls.watch(pb.WatchForUpdatesRequest(), want=1)
    except ConnectError as exc:
        code = exc.code
    expect(code == Code.INVALID_ARGUMENT, f"empty watch: {code}")


async def run_combo(url: str, combo: str, index: int) -> str:
    parts = combo.split("-")
    is_sync = parts[0] == "sync"
    if is_sync:
        parts = parts[1:]
    protocol, codec, http = parts[:3]
    compression = parts[3] if len(parts) > 3 else "gzip"
    kwargs = {"protocol": PROTOCOLS[protocol]}
    if codec == "json":
        kwargs["codec"] = proto_json_codec()
    if compression == "identity":
        kwargs["send_compression"] = None
        kwargs["accept_compression"] = ()
    if is_sync:
        transport = pyqwest.SyncHTTPTransport(http_version=HTTP[http])
        client = ActionsServiceClientSync(url, http_client=pyqwest.SyncClient(transport), **kwargs)
    else:
        transport = pyqwest.HTTPTransport(http_version=HTTP[http])
        client = ActionsServiceClient(url, http_client=pyqwest.Client(transport), **kwargs)
    try:
        await scenario(Calls(client, not is_sync), f"stubs{index}")
        return "ok"
    except Exception as exc:  # reported per combination
        return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
    finally:
        if is_sync:
            client.close()
        else:
            await client.close()


async def main() -> None:
    url, combos = sys.argv[1], sys.argv[2:]
    results = {}
    for i, combo in enumerate(combos):
        results[combo] = await run_combo(url, combo, i)
    versions = {name: version(name) for name in ("flyte", "flyteidl2", "connectrpc", "pyqwest")}
    print(json.dumps({"versions": versions, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
