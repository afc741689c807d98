"""The comparison point: ActionsService on the official ``connectrpc`` server, in memory.

``python -m hypercorn -k asyncio 'bench.official_actions:app()'`` serves Enqueue, Update,
WatchForUpdates, Abort and Signal with the same observable behaviour the benchmarks rely
on (Enqueue: QUEUED, ALREADY_EXISTS, NOT_FOUND parent; Update: terminal phases frozen, an
older attempt refused, ``output_uri`` ending in the attempt number; WatchForUpdates:
subscribe, snapshot of the parent and its direct children, sentinel, then live updates
of the children, merged per action, a stream that falls more than 100 actions behind
ended with UNAVAILABLE; every request checked against the IDL's protovalidate rules,
INVALID_ARGUMENT when it breaks one), with plain dicts for state and no durability at
all: the fastest this contract gets on connect-python, what our service is measured
against. ``BENCH_OFFICIAL_VALIDATE=0`` in its environment skips the request checks (how
the figures before 2026-12-03's fourth pass were taken).

The Connect stubs are generated on first use with ``protoc-gen-connectrpc`` from
flyteidl2's own descriptors (the copy flyteidl2 ships targets connectrpc <= 0.10) and
cached in the temp directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import protovalidate
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.workflow import state_service_pb2

P = phase_pb2
TERMINAL = frozenset(
    {
        P.ACTION_PHASE_SUCCEEDED,
        P.ACTION_PHASE_FAILED,
        P.ACTION_PHASE_TIMED_OUT,
        P.ACTION_PHASE_ABORTED,
        P.ACTION_PHASE_RECOVERED,
    }
)
WATCH_BUFFER = 100
Key = tuple[str, str, str, str, str]  # org, project, domain, run, action


def load_stubs() -> ModuleType:
    """``actions_service_connect`` for the installed connectrpc, generated once."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.compiler import plugin_pb2

    name = "bench_actions_service_connect"
    if name in sys.modules:
        return sys.modules[name]
    version = importlib.metadata.version("protoc-gen-connectrpc")
    files: list[Any] = []

    def add(fd: Any) -> None:
        for dep in fd.dependencies:
            add(dep)
        if fd.name not in {f.name for f in files}:
            files.append(fd)

    add(pb.DESCRIPTOR)
    request = plugin_pb2.CodeGeneratorRequest(
        file_to_generate=[pb.DESCRIPTOR.name], parameter="protobuf=google"
    )
    for fd in files:
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        request.proto_file.append(proto)
    raw = request.SerializeToString()
    digest = hashlib.sha256(raw + version.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"actions-connect-{digest}.py"
    if not target.exists():
        plugin = shutil.which("protoc-gen-connectrpc", path=str(Path(sys.executable).parent))
        if plugin is None:
            raise RuntimeError("protoc-gen-connectrpc not found next to this python")
        out = subprocess.run([plugin], input=raw, capture_output=True, check=True)
        response = plugin_pb2.CodeGeneratorResponse.FromString(out.stdout)
        if response.error:
            raise RuntimeError(response.error)
        text = response.file[0].content.replace(
            "from .actions_service_pb2 import", "from flyteidl2.actions.actions_service_pb2 import"
        )
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    spec = importlib.util.spec_from_file_location(name, target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


VALIDATE = os.environ.get("BENCH_OFFICIAL_VALIDATE", "1") != "0"


def check(request: Any) -> None:
    """The contract's INVALID_ARGUMENT for a request that breaks the IDL's rules."""
    if not VALIDATE:
        return
    violations = protovalidate.collect_violations(request)
    if violations:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        first = violations[0].proto
        path = ".".join(e.field_name for e in first.field.elements)
        raise ConnectError(Code.INVALID_ARGUMENT, f"{path}: {first.message}")


def key_of(action_id: Any) -> Key:
    r = action_id.run
    return (r.org, r.project, r.domain, r.name, action_id.name)


class Record:
    __slots__ = ("action_id", "attempts", "children", "key", "output_base", "parent", "phase")

    def __init__(self, action: Any, phase: int) -> None:
        self.key = key_of(action.action_id)
        self.action_id = action.action_id
        self.parent = action.parent_action_name if action.HasField("parent_action_name") else ""
        self.output_base = action.run_output_base
        self.phase = phase
        self.attempts = 0
        self.children: dict[str, None] = {}

    def update(self) -> state_service_pb2.ActionUpdate:
        uri = f"{self.output_base}/{self.key[4]}/{self.attempts or 1}" if self.output_base else ""
        return state_service_pb2.ActionUpdate(
            action_id=self.action_id,
            phase=self.phase,  # type: ignore[arg-type]
            output_uri=uri,
        )


class Subscriber:
    __slots__ = ("event", "overflow", "pending")

    def __init__(self) -> None:
        self.pending: OrderedDict[str, state_service_pb2.ActionUpdate] = OrderedDict()
        self.event = asyncio.Event()
        self.overflow = False

    def offer(self, name: str, update: state_service_pb2.ActionUpdate) -> None:
        if name in self.pending or len(self.pending) < WATCH_BUFFER:
            self.pending[name] = update
        else:
            self.overflow = True
        self.event.set()


class Service:
    def __init__(self) -> None:
        self.actions: dict[Key, Record] = {}
        self.watchers: dict[Key, set[Subscriber]] = {}

    def _publish(self, rec: Record) -> None:
        if not rec.parent:
            return
        subs = self.watchers.get((*rec.key[:4], rec.parent))
        if subs:
            update = rec.update()
            for sub in subs:
                sub.offer(rec.key[4], update)

    def _get(self, action_id: Any) -> Record:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        rec = self.actions.get(key_of(action_id))
        if rec is None:
            raise ConnectError(Code.NOT_FOUND, f"action {action_id.name!r} not found")
        return rec

    async def enqueue(self, request: pb.EnqueueRequest, ctx: Any) -> pb.EnqueueResponse:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        check(request)

        action = request.action
        key = key_of(action.action_id)
        if key in self.actions:
            raise ConnectError(Code.ALREADY_EXISTS, f"action {key[4]!r} already exists")
        rec = Record(action, P.ACTION_PHASE_QUEUED)
        if rec.parent:
            parent = self.actions.get((*key[:4], rec.parent))
            if parent is None:
                raise ConnectError(Code.NOT_FOUND, f"parent action {rec.parent!r} not found")
            parent.children[key[4]] = None
        self.actions[key] = rec
        self._publish(rec)
        return pb.EnqueueResponse()

    async def update(self, request: pb.UpdateRequest, ctx: Any) -> pb.UpdateResponse:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        check(request)

        rec = self._get(request.action_id)
        status = request.status
        phase = status.phase or rec.phase
        if rec.phase in TERMINAL:
            if phase == rec.phase:
                return pb.UpdateResponse()
            raise ConnectError(Code.FAILED_PRECONDITION, "action is terminal")
        if request.attempt < rec.attempts:
            raise ConnectError(Code.FAILED_PRECONDITION, "older attempt")
        attempts = max(request.attempt, status.attempts)
        if (phase, attempts) != (rec.phase, rec.attempts):
            rec.phase, rec.attempts = phase, attempts
            self._publish(rec)
        return pb.UpdateResponse()

    async def abort(self, request: pb.AbortRequest, ctx: Any) -> pb.AbortResponse:
        check(request)
        rec = self._get(request.action_id)
        stack = [rec]
        while stack:
            cur = stack.pop()
            self.actions.pop(cur.key, None)
            stack += [c for n in cur.children if (c := self.actions.get((*cur.key[:4], n)))]
            if cur.phase not in TERMINAL:
                cur.phase = P.ACTION_PHASE_ABORTED
                self._publish(cur)
        return pb.AbortResponse()

    async def signal(self, request: pb.SignalRequest, ctx: Any) -> pb.SignalResponse:
        check(request)
        rec = self._get(request.action_id)
        if rec.phase not in TERMINAL:
            rec.phase = P.ACTION_PHASE_SUCCEEDED
            self._publish(rec)
        return pb.SignalResponse()

    async def watch_for_updates(
        self, request: pb.WatchForUpdatesRequest, ctx: Any
    ) -> AsyncIterator[pb.WatchForUpdatesResponse]:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        check(request)
        scope = key_of(request.parent_action_id)
        sub = Subscriber()  # subscribe, then read: no await in between
        self.watchers.setdefault(scope, set()).add(sub)
        snapshot = []
        parent = self.actions.get(scope)
        if parent is not None:
            snapshot.append(parent.update())
            for child in parent.children:
                rec = self.actions.get((*scope[:4], child))
                if rec is not None:
                    snapshot.append(rec.update())
        try:
            for update in snapshot:
                yield pb.WatchForUpdatesResponse(action_update=update)
            yield pb.WatchForUpdatesResponse(
                control_message=state_service_pb2.ControlMessage(sentinel=True)
            )
            while True:
                while not sub.pending:
                    if sub.overflow:
                        raise ConnectError(Code.UNAVAILABLE, "watch fell behind; reconnect")
                    sub.event.clear()
                    await sub.event.wait()
                _, update = sub.pending.popitem(last=False)
                yield pb.WatchForUpdatesResponse(action_update=update)
        finally:
            subs = self.watchers.get(scope)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.watchers[scope]


def app() -> Any:
    stubs = load_stubs()
    impl = type("Impl", (Service, stubs.ActionsService), {})()
    return stubs.ActionsServiceASGIApplication(impl)
