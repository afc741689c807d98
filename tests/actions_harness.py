"""Test support for the Actions Service: request builders and one client interface that
runs the same test body against direct handler calls or over the wire."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common.identifier_pb2 import ActionIdentifier
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.workflow.state_service_pb2 import ActionUpdate

from connect_proto.context import RequestContext
from connect_proto.errors import RpcError
from connect_proto.headers import Headers

ORG, PROJECT, DOMAIN = "o", "p", "development"


def aid(action: str, run: str = "r1", *, org: str = ORG, project: str = PROJECT,
        domain: str = DOMAIN) -> ActionIdentifier:  # fmt: skip
    return ActionIdentifier(
        run={"org": org, "project": project, "domain": domain, "name": run}, name=action
    )


def _action(action_id: ActionIdentifier, parent: str | None, **kw: Any) -> pb.Action:
    a = pb.Action(
        action_id=action_id,
        input_uri="s3://bucket/in",
        run_output_base="s3://bucket/org/p/d/run",
        **kw,
    )
    if parent is not None:
        a.parent_action_name = parent
    return a


def task_req(
    action_id: ActionIdentifier, parent: str | None = None, **kw: Any
) -> pb.EnqueueRequest:
    task = {
        "spec": {
            "task_template": {"type": "python-task", "id": {"name": "mod.fn"}},
            "short_name": "fn",
        },
        "cache_key": {"value": "ck"},
    }
    return pb.EnqueueRequest(action=_action(action_id, parent, task=task), **kw)


def condition_req(
    action_id: ActionIdentifier,
    parent: str,
    simple: int = types_pb2.BOOLEAN,
    literal_type: types_pb2.LiteralType | None = None,
) -> pb.EnqueueRequest:
    cond = {"name": "approve", "type": literal_type or types_pb2.LiteralType(simple=simple)}
    return pb.EnqueueRequest(action=_action(action_id, parent, condition=cond))


def trace_req(action_id: ActionIdentifier, parent: str, **trace: Any) -> pb.EnqueueRequest:
    body = {"name": "tr", "spec": {}, "outputs": {"output_uri": "s3://bucket/trace/out"}, **trace}
    return pb.EnqueueRequest(action=_action(action_id, parent, trace=body))


def update_req(
    action_id: ActionIdentifier, phase: int, attempt: int = 1, **status: Any
) -> pb.UpdateRequest:
    status.setdefault("attempts", attempt)
    return pb.UpdateRequest(action_id=action_id, attempt=attempt, status={"phase": phase, **status})


def bool_literal(value: bool) -> literals_pb2.Literal:
    return literals_pb2.Literal(scalar={"primitive": {"boolean": value}})


def int_literal(value: int) -> literals_pb2.Literal:
    return literals_pb2.Literal(scalar={"primitive": {"integer": value}})


def string_literal(value: str) -> literals_pb2.Literal:
    return literals_pb2.Literal(scalar={"primitive": {"string_value": value}})


class StreamEnded(Exception):
    """The watch stream ended without error."""


class WatchStream(Protocol):
    async def next(self) -> pb.WatchForUpdatesResponse: ...


async def read_snapshot(stream: WatchStream) -> dict[str, ActionUpdate]:
    """Updates up to the sentinel, by action name."""
    out: dict[str, ActionUpdate] = {}
    while True:
        msg = await stream.next()
        if msg.HasField("control_message"):
            assert msg.control_message.sentinel
            return out
        out[msg.action_update.action_id.name] = msg.action_update


async def next_update(stream: WatchStream, seconds: float = 5) -> ActionUpdate:
    with trio.fail_after(seconds):
        msg = await stream.next()
    assert msg.HasField("action_update"), msg
    return msg.action_update


class Client(Protocol):
    async def enqueue(self, req: pb.EnqueueRequest) -> pb.EnqueueResponse: ...
    async def update(self, req: pb.UpdateRequest) -> pb.UpdateResponse: ...
    async def abort(self, req: pb.AbortRequest) -> pb.AbortResponse: ...
    async def signal(self, req: pb.SignalRequest) -> pb.SignalResponse: ...
    def watch(self, req: pb.WatchForUpdatesRequest) -> Any: ...


@dataclass
class _End:
    error: RpcError | None


@dataclass
class DirectStream:
    receive: trio.MemoryReceiveChannel[Any]
    ended: bool = False

    async def next(self) -> pb.WatchForUpdatesResponse:
        if self.ended:
            raise StreamEnded
        item = await self.receive.receive()
        if isinstance(item, _End):
            self.ended = True
            if item.error is not None:
                raise item.error
            raise StreamEnded
        return item


@dataclass
class DirectClient:
    """Calls the handlers in-process with a RequestContext, as the protocol layer does."""

    service: Any
    contexts: list[RequestContext] = field(default_factory=list)

    def _ctx(self, method: str) -> RequestContext:
        ctx = RequestContext(
            method=f"/flyteidl2.actions.ActionsService/{method}",
            protocol="direct",
            request_headers=Headers(),
            deadline=math.inf,
        )
        self.contexts.append(ctx)
        return ctx

    async def enqueue(self, req: pb.EnqueueRequest) -> pb.EnqueueResponse:
        return await self.service.enqueue(req, self._ctx("Enqueue"))

    async def update(self, req: pb.UpdateRequest) -> pb.UpdateResponse:
        return await self.service.update(req, self._ctx("Update"))

    async def abort(self, req: pb.AbortRequest) -> pb.AbortResponse:
        return await self.service.abort(req, self._ctx("Abort"))

    async def signal(self, req: pb.SignalRequest) -> pb.SignalResponse:
        return await self.service.signal(req, self._ctx("Signal"))

    @asynccontextmanager
    async def watch(self, req: pb.WatchForUpdatesRequest) -> AsyncIterator[DirectStream]:
        # Capacity 0: the handler's send blocks until the test reads, like a reader whose
        # flow-control window is full.
        send, receive = trio.open_memory_channel[Any](0)
        ctx = self._ctx("WatchForUpdates")

        async def run() -> None:
            error: RpcError | None = None
            try:
                await self.service.watch_for_updates(req, ctx, send.send)
            except RpcError as exc:
                error = exc
            await send.send(_End(error))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                try:
                    yield DirectStream(receive)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Surface a lone RpcError as itself, as the wire client does.
            leaves = _leaves(group)
            if len(leaves) == 1 and isinstance(leaves[0], RpcError):
                raise leaves[0] from None
            raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def wait_until(predicate: Any, seconds: float = 5, poll: float = 0.01) -> None:
    """Poll ``predicate`` (state owned by other tasks or processes) until it holds."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - the state has no event to wait on
            await trio.sleep(poll)


# -- environments: the same test body against direct calls and over the wire ------------


@dataclass
class WireStream:
    agen: Any
    ended: bool = False

    async def next(self) -> pb.WatchForUpdatesResponse:
        if self.ended:
            raise StreamEnded
        try:
            return await self.agen.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise StreamEnded from None
        except RpcError:
            self.ended = True
            raise


@dataclass
class WireClient:
    """The same calls through connect_proto's ConnectClient against a served app."""

    client: Any
    prefix: str = "/flyteidl2.actions.ActionsService/"

    async def enqueue(self, req: pb.EnqueueRequest) -> pb.EnqueueResponse:
        return await self.client.unary(self.prefix + "Enqueue", req, pb.EnqueueResponse)

    async def update(self, req: pb.UpdateRequest) -> pb.UpdateResponse:
        return await self.client.unary(self.prefix + "Update", req, pb.UpdateResponse)

    async def abort(self, req: pb.AbortRequest) -> pb.AbortResponse:
        return await self.client.unary(self.prefix + "Abort", req, pb.AbortResponse)

    async def signal(self, req: pb.SignalRequest) -> pb.SignalResponse:
        return await self.client.unary(self.prefix + "Signal", req, pb.SignalResponse)

    @asynccontextmanager
    async def watch(self, req: pb.WatchForUpdatesRequest) -> AsyncIterator[WireStream]:
        agen = self.client.server_stream(
            self.prefix + "WatchForUpdates", req, pb.WatchForUpdatesResponse
        )
        try:
            yield WireStream(agen)
        finally:
            with trio.CancelScope(shield=True):
                await agen.aclose()


@dataclass
class Env:
    mode: str
    client: Any
    store: Any
    fanout: Any
    service: Any


@asynccontextmanager
async def open_env(mode: str, wrap_store: Any = None, **fanout_kw: Any) -> AsyncIterator[Env]:
    """``wrap_store(store)`` may return a test double that the service uses instead."""
    from actions.app import build_app
    from actions.config import Config
    from actions.fanout import FanOut
    from actions.service import ActionsService
    from actions.store.embedded import EmbeddedStore

    store = await EmbeddedStore.open(None)
    used = wrap_store(store) if wrap_store else store
    if mode == "direct":
        fanout = FanOut(used, **{"workers": 4, "buffer_size": 16, **fanout_kw})
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)
            service = ActionsService(used, fanout)
            try:
                yield Env(mode, DirectClient(service), store, fanout, service)
            finally:
                nursery.cancel_scope.cancel()
        await store.aclose()
        return

    from connect_proto.client import ConnectClient
    from connect_proto.server import make_config
    from connect_proto.server import serve as serve_asgi

    async def open_store(_: Config) -> Any:
        return used

    config = Config(
        port=0,
        watch_workers=fanout_kw.get("workers", 4),
        watch_buffer_size=fanout_kw.get("buffer_size", 16),
        subscriber_buffer_size=fanout_kw.get("subscriber_buffer", 1000),
    )
    application = build_app(config, open_store=open_store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        async with ConnectClient(f"http://127.0.0.1:{port}", http2=mode == "wire-h2") as cc:
            try:
                yield Env(mode, WireClient(cc), store, application.fanout, application.service)
            finally:
                application.begin_shutdown()
                nursery.cancel_scope.cancel()
