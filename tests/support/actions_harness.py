"""Test support for the Actions Service: request builders and one client interface that
runs the same test body against direct handler calls or over the wire."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.common.identifier_pb2 import ActionIdentifier
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.workflow.state_service_pb2 import ActionUpdate

from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._headers import Headers

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
    backend: str = "embedded"
    emulator: Any = None  # the kube_emulator.Emulator behind a "kubernetes" backend
    application: Any = None  # the ActionsApplication in the wire modes


# -- backends: the same test body against the embedded store and the Kubernetes one ------

BACKENDS = ["embedded", "kubernetes"]
CRD_PATH = Path(__file__).resolve().parents[2] / "k8s" / "crd.yaml"


def fast_kube_settings(**overrides: Any) -> Any:
    """Client settings for tests: no client-side throttling, short timeouts."""
    from actions.store.kubernetes import ClientSettings

    base: dict[str, Any] = {
        "watch_timeout": 30,
        "qps": 1000,
        "burst": 1000,
        "connect_timeout": 1,
        "request_timeout": 5,
    }
    return ClientSettings(**{**base, **overrides})


@asynccontextmanager
async def open_emulator(**options: Any) -> AsyncIterator[Any]:
    """A started Kubernetes API emulator with the TaskAction CRD and namespace flyte,
    stopped (its threads joined) on exit."""
    from kube_emulator import Emulator

    emu = Emulator(crds=[CRD_PATH], namespaces=["flyte"], **options)
    emu.start()
    try:
        yield emu
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(emu.stop)


async def open_store(backend: str, emulator: Any = None, **options: Any) -> Any:
    """A fresh store of ``backend``; ``options`` go to the store's ``open``."""
    if backend == "embedded":
        from actions.store.embedded import EmbeddedStore

        return await EmbeddedStore.open(None, **options)
    if backend == "kubernetes":
        from actions.store.kubernetes import KubernetesStore

        options.setdefault("settings", fast_kube_settings())
        return await KubernetesStore.open(api_client=emulator.api_client(), **options)
    raise ValueError(backend)


@asynccontextmanager
async def open_env(
    mode: str,
    wrap_store: Any = None,
    *,
    backend: str = "embedded",
    emulator: Any = None,
    store_options: dict[str, Any] | None = None,
    **fanout_kw: Any,
) -> AsyncIterator[Env]:
    """``wrap_store(store)`` may return a test double that the service uses instead.

    ``backend="kubernetes"`` runs on a Kubernetes API emulator (``emulator``, or one
    started for this environment). Over the wire the app opens the store itself in its
    lifespan, through ``build_app(config, open_store=...)``, as the served app does.
    """
    if backend == "kubernetes" and emulator is None:
        async with open_emulator() as emu:
            async with open_env(
                mode,
                wrap_store,
                backend=backend,
                emulator=emu,
                store_options=store_options,
                **fanout_kw,
            ) as env:
                yield env
        return

    from actions.app import build_app
    from actions.config import Config
    from actions.fanout import FanOut
    from actions.service import ActionsService

    opened: dict[str, Any] = {}

    async def make_store() -> Any:
        store = await open_store(backend, emulator, **(store_options or {}))
        opened["store"] = store
        return wrap_store(store) if wrap_store else store

    if mode == "direct":
        used = await make_store()
        try:
            fanout = FanOut(used, **{"workers": 4, "buffer_size": 16, **fanout_kw})
            async with trio.open_nursery() as nursery:
                await nursery.start(fanout.run)
                service = ActionsService(used, fanout)
                try:
                    yield Env(
                        mode,
                        DirectClient(service),
                        opened["store"],
                        fanout,
                        service,
                        backend,
                        emulator,
                    )
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await opened["store"].aclose()
        return

    from connect_proto._client import ConnectClient
    from connect_proto._server.serve import make_config
    from connect_proto._server.serve import serve as serve_asgi

    async def open_store_for_app(_: Config) -> Any:
        return await make_store()

    config = Config(
        port=0,
        watch_workers=fanout_kw.get("workers", 4),
        watch_buffer_size=fanout_kw.get("buffer_size", 16),
        subscriber_buffer_size=fanout_kw.get("subscriber_buffer", 1000),
    )
    application = build_app(config, open_store=open_store_for_app)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
            )
            async with ConnectClient(f"http://127.0.0.1:{port}", http2=mode == "wire-h2") as cc:
                try:
                    yield Env(
                        mode,
                        WireClient(cc),
                        opened["store"],
                        application.fanout,
                        application.service,
                        backend,
                        emulator,
                        application,
                    )
                finally:
                    application.begin_shutdown()
                    nursery.cancel_scope.cancel()
    finally:
        if "store" in opened:  # the lifespan closes it; make sure, also on failure
            with trio.CancelScope(shield=True):
                await opened["store"].aclose()


# -- watchers that reconnect, and the "no update silently lost" check ----------------------

_RANK = {
    phase_pb2.ACTION_PHASE_UNSPECIFIED: 0,
    phase_pb2.ACTION_PHASE_QUEUED: 1,
    phase_pb2.ACTION_PHASE_WAITING_FOR_RESOURCES: 2,
    phase_pb2.ACTION_PHASE_INITIALIZING: 3,
    phase_pb2.ACTION_PHASE_RUNNING: 4,
    phase_pb2.ACTION_PHASE_PAUSED: 4,
}
TERMINAL = frozenset(
    {
        phase_pb2.ACTION_PHASE_SUCCEEDED,
        phase_pb2.ACTION_PHASE_FAILED,
        phase_pb2.ACTION_PHASE_TIMED_OUT,
        phase_pb2.ACTION_PHASE_ABORTED,
    }
)


def _rank(phase: int) -> int:
    return 9 if phase in TERMINAL else _RANK.get(phase, 0)


@dataclass
class WatcherView:
    """What a client (the SDK) knows of a parent's children, kept the way the SDK keeps
    it: rebuilt from every snapshot, then updated from the stream; a stream that ends
    with UNAVAILABLE (or a connect that fails with it) is retried for a fresh snapshot.
    The parent's own entry in a snapshot is left out (it gets no live updates)."""

    client: Any
    parent: ActionIdentifier
    state: dict[str, ActionUpdate] = field(default_factory=dict)
    snapshots: int = 0
    updates: int = 0
    unavailable: list[str] = field(default_factory=list)  # every UNAVAILABLE seen
    resyncs: int = 0  # streams that had their snapshot, then ended with UNAVAILABLE
    regressions: list[str] = field(default_factory=list)  # an action moved backwards

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; ``started()`` after the first snapshot."""
        request = pb.WatchForUpdatesRequest(parent_action_id=self.parent)
        started = False
        while True:
            synced = False
            try:
                async with self.client.watch(request) as stream:
                    snapshot = await read_snapshot(stream)
                    synced = True
                    self.snapshots += 1
                    self.state = {n: u for n, u in snapshot.items() if n != self.parent.name}
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        msg = await stream.next()
                        assert msg.HasField("action_update"), msg
                        update = msg.action_update
                        name = update.action_id.name
                        before = self.state.get(name)
                        if before is not None and _rank(update.phase) < _rank(before.phase):
                            self.regressions.append(f"{name}: {before.phase} -> {update.phase}")
                        self.state[name] = update
                        self.updates += 1
            except RpcError as exc:
                if exc.code != Code.UNAVAILABLE:
                    raise
                self.unavailable.append(exc.message)
                self.resyncs += synced
                await trio.sleep(0.05)
            except StreamEnded:
                raise AssertionError("a watch stream ended without an error") from None


async def store_children(store: Any, parent: ActionIdentifier) -> dict[str, ActionUpdate]:
    """The store's state of ``parent``'s direct children, as the service maps it."""
    from actions import naming, objects

    key = objects.WatchKey.for_parent(parent)
    children, _ = await store.list(naming.children_selector(parent))
    return {
        c["spec"]["actionName"]: objects.action_update(c, store.namespace)
        for c in children
        if objects.watch_key_of(c) == key
    }


def view_problems(view: WatcherView, final: dict[str, ActionUpdate]) -> list[str]:
    """Where a watcher's view differs from the store's final state: every live child
    exactly as stored; a child the view still holds but the store no longer has (deleted)
    must have been reported ABORTED, or its terminal phase; no action moved backwards."""
    problems = list(view.regressions)
    for name, update in sorted(final.items()):
        seen = view.state.get(name)
        if seen != update:
            problems.append(
                f"{name}: view has {None if seen is None else (seen.phase, seen.output_uri)}, "
                f"store has {(update.phase, update.output_uri)}"
            )
    for name in sorted(view.state.keys() - final.keys()):
        if view.state[name].phase not in TERMINAL:
            phase = view.state[name].phase
            problems.append(f"{name}: deleted, but the view still has phase {phase}")
    return problems


async def assert_final_views(
    store: Any, views: list[WatcherView], within: float = 10
) -> dict[str, ActionUpdate]:
    """Final view of each watcher (including its reconnects after UNAVAILABLE) equals the
    store's final state; waits up to ``within`` for the streams to catch up. Returns the
    final state of the first view's parent."""
    problems: dict[str, list[str]] = {"(none checked yet)": []}
    with trio.move_on_after(within):
        while True:
            current: dict[str, list[str]] = {}
            for i, view in enumerate(views):
                final = await store_children(store, view.parent)
                found = view_problems(view, final)
                if found:
                    current[f"watcher {i} on {view.parent.name}"] = found
            problems = current
            if not problems:
                return await store_children(store, views[0].parent)
            await trio.sleep(0.02)
    raise AssertionError(f"watchers did not converge on the store's final state: {problems}")


@dataclass
class Retrying:
    """Calls the service the way the SDK does: UNAVAILABLE is retried with a short pause;
    ``ALREADY_EXISTS`` on a retried Enqueue and ``NOT_FOUND`` on a retried Abort mean an
    earlier try got through."""

    client: Any
    unavailable: int = 0

    async def _call(self, fn: Any, req: Any, done_codes: tuple[Code, ...] = ()) -> Any:
        retried = False
        with trio.fail_after(20):
            while True:
                try:
                    return await fn(req)
                except RpcError as exc:
                    if retried and exc.code in done_codes:
                        return None
                    if exc.code != Code.UNAVAILABLE:
                        raise
                    self.unavailable += 1
                    retried = True
                    await trio.sleep(0.05)

    async def enqueue(self, req: pb.EnqueueRequest) -> Any:
        return await self._call(self.client.enqueue, req, (Code.ALREADY_EXISTS,))

    async def update(self, req: pb.UpdateRequest) -> Any:
        return await self._call(self.client.update, req)

    async def abort(self, req: pb.AbortRequest) -> Any:
        return await self._call(self.client.abort, req, (Code.NOT_FOUND,))

    async def signal(self, req: pb.SignalRequest) -> Any:
        return await self._call(self.client.signal, req)


def new_threads(before: set[Any]) -> list[Any]:
    """Threads started since ``before`` that are still alive, except trio's idle worker
    threads (cached for reuse; a busy one carries its job's name and does count)."""
    import threading

    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]


def assert_no_leaked_threads(before: set[Any], grace: float = 5) -> None:
    import time

    deadline = time.monotonic() + grace
    while (leaked := new_threads(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


class WriteDuringList:
    """A store whose next ``list``, once ``armed``, changes action ``c1`` of run r1 right
    after reading: a write that lands between a snapshot's read and its sending."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, labels: dict[str, str]) -> Any:
        from actions import naming

        result = await self._inner.list(labels)
        if self.armed:
            self.armed = False
            obj = await self._inner.get(naming.object_name(aid("c1")))
            obj["status"]["conditions"][0]["reason"] = "Executing"
            await self._inner.update_status(obj)
        return result


@asynccontextmanager
async def serve_with_tokens(tmp_path: Path, tokens_yaml: str) -> AsyncIterator[str]:
    """The whole application on a memory store, on 127.0.0.1, under a token file with
    ``tokens_yaml``; yields its URL."""
    from actions.app import ActionsApplication, open_memory_store
    from actions.config import Config
    from connect_proto._server.serve import make_config
    from connect_proto._server.serve import serve as serve_asgi

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml)
    application = ActionsApplication(
        Config(port=0, auth_token_file=tokens), open_store=open_memory_store
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()
