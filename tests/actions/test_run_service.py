"""The run-service notifier (actions.runservice) against run-service doubles.

Two doubles of ``flyteidl2.workflow.InternalRunService``: one served in-process by our
own ``connect_proto`` (trio), which records every call and can refuse, fail or hang on
demand; and one on the PyPI ``connectrpc`` server in a subprocess, a Connect
implementation this project did not write. Store events are fed to ``observe`` as the
fan-out will feed them; the restart tests use the embedded store, whose objects the
notifier marks.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from actions_harness import aid, bool_literal, condition_req, task_req, trace_req, wait_until
from flyteidl2.actions import actions_service_pb2 as apb
from flyteidl2.core.catalog_pb2 import CACHE_HIT, CACHE_MISS
from flyteidl2.core.literals_pb2 import Literal
from flyteidl2.workflow import internal_run_service_pb2 as rpb
from google.protobuf import json_format
from google.protobuf.message import Message
from servers import ROOT, _readline_with_timeout, _stop

from actions import naming, objects, phases
from actions.runservice import (
    TERMINAL_RECORDED,
    ConnectRunServiceClient,
    RunServiceNotifier,
    notifier_for,
    url_problem,
)
from actions.runservice.buffer import Offer, Pending, PendingBuffer
from actions.runservice.client import SERVICE
from actions.runservice.notifier import MARK_ATTEMPTS
from actions.store.base import KubeObject, WatchEvent
from actions.store.errors import NotFound, StoreUnavailable
from connect_proto import Code, ConnectApp, RequestContext, RpcError, make_config, serve

NAMESPACE = "flyte"
CREATED = "2026-03-04T05:06:07Z"
CREATED_SECONDS = 1772600767  # CREATED as a Unix time


# --------------------------------------------------------------------------- objects


def _fake_parent(name: str) -> KubeObject:
    return {"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": {}}


def make_obj(
    request: apb.EnqueueRequest,
    phase: int | None = None,
    *,
    rv: int = 1,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> KubeObject:
    """The object Enqueue stores for ``request`` (with metadata the store fills in), in
    ``phase`` (default: the type's initial phase)."""
    action = request.action
    parent = None
    if action.HasField("parent_action_name"):
        parent = _fake_parent(
            naming.parent_object_name(action.action_id.run, action.parent_action_name)
        )
    if action.WhichOneof("spec") == objects.TYPE_TRACE:
        assert parent is not None
        obj = objects.new_trace_object(request, NAMESPACE, parent)
        obj["metadata"].update(resourceVersion=str(rv), creationTimestamp=CREATED, uid="u")
        return obj
    obj = objects.new_object(request, NAMESPACE, parent)
    obj["metadata"].update(resourceVersion=str(rv), creationTimestamp=CREATED, uid="u")
    if annotations:
        obj["metadata"].setdefault("annotations", {}).update(annotations)
    st = objects.initial_status(obj, action, CREATED)
    if phase is not None:
        st["conditions"] = phases.conditions_for(phase, CREATED)
    st.update(status or {})
    obj["status"] = st
    return obj


def name_of(obj: KubeObject) -> str:
    return str(obj["metadata"]["name"])


def event(obj: KubeObject, kind: str = "MODIFIED") -> WatchEvent:
    return WatchEvent(kind, obj)  # type: ignore[arg-type]


ROOT_REQ = task_req(aid("a0"))
ROOT_REQ.action.group = "g1"
CHILD_REQ = task_req(aid("c1"), "a0")
CHILD2_REQ = task_req(aid("c2"), "a0")


# --------------------------------------------------------------------------- doubles


@dataclass
class Call:
    method: str
    request: Message

    @property
    def action(self) -> str:
        return str(self.request.action_id.name)  # type: ignore[attr-defined]


@dataclass
class RunServiceDouble:
    """InternalRunService on connect_proto: records calls; refuses in-band the actions
    named in ``reject``; ``fail`` makes every call fail with that code; ``hang`` makes
    every call wait until released."""

    calls: list[Call] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    already: set[str] = field(default_factory=set)  # RecordAction answers ALREADY_EXISTS
    fail: Code | None = None
    hang: bool = False
    released: trio.Event = field(default_factory=trio.Event)
    attempts: int = 0

    async def _answer(self, method: str, request: Any, response: Any) -> Any:
        self.attempts += 1
        if self.hang:
            await self.released.wait()
        if self.fail is not None:
            raise RpcError(self.fail, "double says no")
        self.calls.append(Call(method, request))
        response.action_id.CopyFrom(request.action_id)
        if request.action_id.name in self.reject:
            response.status.code = 9
            response.status.message = "refused by the double"
        elif method == "RecordAction" and request.action_id.name in self.already:
            response.status.code = Code.ALREADY_EXISTS.grpc
            response.status.message = "already recorded"
        return response

    async def record_action(
        self, request: rpb.RecordActionRequest, ctx: RequestContext
    ) -> rpb.RecordActionResponse:
        return await self._answer("RecordAction", request, rpb.RecordActionResponse())

    async def update_action_status(
        self, request: rpb.UpdateActionStatusRequest, ctx: RequestContext
    ) -> rpb.UpdateActionStatusResponse:
        return await self._answer("UpdateActionStatus", request, rpb.UpdateActionStatusResponse())

    def of(self, method: str, action: str | None = None) -> list[Any]:
        return [
            c.request
            for c in self.calls
            if c.method == method and (action is None or c.action == action)
        ]

    def phases_of(self, action: str) -> list[int]:
        return [r.status.phase for r in self.of("UpdateActionStatus", action)]


class FakeStore:
    """The notifier's view of a store: list and patch_annotations, recorded."""

    def __init__(self, *objs: KubeObject) -> None:
        self.objects = {name_of(o): o for o in objs}
        self.patches: list[tuple[str, dict[str, str]]] = []
        self.lists = 0
        self.fail_patches = 0  # the next patches that fail

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject:
        if self.fail_patches:
            self.fail_patches -= 1
            raise StoreUnavailable("the API server is away")
        self.patches.append((name, dict(annotations)))
        obj = self.objects.get(name)
        if obj is None:
            raise NotFound(name)
        obj["metadata"].setdefault("annotations", {}).update(annotations)
        return obj

    def marked(self) -> list[str]:
        return [name for name, ann in self.patches if ann.get(TERMINAL_RECORDED) == "true"]

    # Last: inside the class body, the name ``list`` means this method from here on.
    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]:
        self.lists += 1
        return [*self.objects.values()], "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def served(double: RunServiceDouble, port: int = 0) -> AsyncIterator[str]:
    app = ConnectApp([(SERVICE, double)])
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, app, make_config("127.0.0.1", port))
        yield f"http://127.0.0.1:{bound}"
        double.released.set()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(url: str, store: Any, **options: Any) -> AsyncIterator[RunServiceNotifier]:
    options.setdefault("scan_on_start", False)
    options.setdefault("backoff_base", 0.02)
    options.setdefault("backoff_max", 0.2)
    options.setdefault("call_timeout", 2.0)
    options.setdefault("rng", random.Random(7))
    notifier = notifier_for(url, store, **options)
    assert notifier is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        yield notifier
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def setup(
    *objs: KubeObject, double: RunServiceDouble | None = None, **options: Any
) -> AsyncIterator[tuple[RunServiceDouble, FakeStore, RunServiceNotifier]]:
    double = double or RunServiceDouble()
    store = FakeStore(*objs)
    async with served(double) as url, running(url, store, **options) as notifier:
        yield double, store, notifier


async def settle(notifier: RunServiceNotifier, seconds: float = 0.2) -> None:
    """Let the notifier go idle, then a little longer: to show that nothing else comes."""
    await wait_until(lambda: notifier.buffered() == 0)
    await trio.sleep(seconds)


# --------------------------------------------------------------------------- behaviour


async def test_record_once_then_status_per_phase_then_mark() -> None:
    async with setup() as (double, store, notifier):
        obj = make_obj(ROOT_REQ, phases.QUEUED, rv=1)
        store.objects[name_of(obj)] = obj
        notifier.observe(event(obj, "ADDED"))
        await wait_until(lambda: len(double.of("UpdateActionStatus")) == 1)
        # The same phase again (e.g. the status write after create): nothing new.
        notifier.observe(event(make_obj(ROOT_REQ, phases.QUEUED, rv=2)))
        for rv, phase in enumerate([phases.INITIALIZING, phases.RUNNING], start=3):
            notifier.observe(event(make_obj(ROOT_REQ, phase, rv=rv, status={"attempts": 1})))
            await wait_until(lambda p=phase: double.phases_of("a0")[-1:] == [p])
        done = make_obj(
            ROOT_REQ, phases.SUCCEEDED, rv=9, status={"attempts": 2, "cacheStatus": "CACHE_HIT"}
        )
        store.objects[name_of(done)] = done
        notifier.observe(event(done))
        await wait_until(lambda: store.marked() == [name_of(done)])
        # The mark's own MODIFIED event: the object is finished.
        notifier.observe(event(done))
        await settle(notifier)

    records = double.of("RecordAction")
    assert len(records) == 1
    record = records[0]
    assert record.action_id == aid("a0")
    assert (record.parent, record.group, record.input_uri) == ("", "g1", "s3://bucket/in")
    assert record.task.spec.task_template.id.name == "mod.fn"
    assert record.task.spec.short_name == "fn"
    assert record.task.id.name == "mod.fn"
    assert record.task.cache_key.value == "ck"
    assert double.phases_of("a0") == [
        phases.QUEUED, phases.INITIALIZING, phases.RUNNING, phases.SUCCEEDED,
    ]  # fmt: skip
    statuses = double.of("UpdateActionStatus", "a0")
    assert [s.status.attempts for s in statuses] == [0, 1, 1, 2]
    assert statuses[-1].status.cache_status == CACHE_HIT
    assert all(s.status.start_time.seconds == CREATED_SECONDS for s in statuses)
    assert double.calls[0].method == "RecordAction"  # recorded before any status
    assert store.objects[name_of(done)]["metadata"]["annotations"][TERMINAL_RECORDED] == "true"
    assert notifier.metrics.marked == 1


async def test_cache_status_as_the_executor_writes_it() -> None:
    """The executor's schema stores the enum number, this service the name."""
    async with setup() as (double, _, notifier):
        notifier.observe(event(make_obj(ROOT_REQ, phases.RUNNING, status={"cacheStatus": 1})))
        await wait_until(lambda: len(double.of("UpdateActionStatus")) == 1)
    assert double.of("UpdateActionStatus")[0].status.cache_status == CACHE_MISS


async def test_parent_promoted_to_running_when_its_first_child_appears() -> None:
    async with setup(senders=1) as (double, _, notifier):
        notifier.observe(event(make_obj(ROOT_REQ, phases.QUEUED), "ADDED"))
        await wait_until(lambda: double.phases_of("a0") == [phases.QUEUED])
        notifier.observe(event(make_obj(CHILD_REQ), "ADDED"))
        await wait_until(lambda: double.phases_of("a0") == [phases.QUEUED, phases.RUNNING])
        notifier.observe(event(make_obj(CHILD2_REQ), "ADDED"))
        # The parent's own late INITIALIZING does not take it back below RUNNING.
        notifier.observe(event(make_obj(ROOT_REQ, phases.INITIALIZING, rv=5)))
        await settle(notifier)
        notifier.observe(event(make_obj(ROOT_REQ, phases.SUCCEEDED, rv=6)))
        await wait_until(lambda: double.phases_of("a0")[-1:] == [phases.SUCCEEDED])

    # The promotion carries the phase only; the parent's own (floored) report after it
    # carries its start time.
    assert double.phases_of("a0") == [
        phases.QUEUED, phases.RUNNING, phases.RUNNING, phases.SUCCEEDED,
    ]  # fmt: skip
    promotion, own = double.of("UpdateActionStatus", "a0")[1:3]
    assert not promotion.status.HasField("start_time")
    assert own.status.start_time.seconds == CREATED_SECONDS
    child = double.of("RecordAction", "c1")[0]
    assert child.parent == "a0"
    assert [r.action_id.name for r in double.of("RecordAction")] == ["a0", "c1", "c2"]


async def test_parent_promotion_without_the_parent_object() -> None:
    """The parent's own events may come later (or never, if it is marked): the
    promotion carries just the phase, as upstream's does."""
    async with setup() as (double, _, notifier):
        notifier.observe(event(make_obj(CHILD_REQ), "ADDED"))
        await wait_until(lambda: double.phases_of("a0") == [phases.RUNNING])
    promotion = double.of("UpdateActionStatus", "a0")[0]
    assert promotion.action_id == aid("a0")


async def test_no_promotion_of_a_finished_parent() -> None:
    marked = make_obj(ROOT_REQ, phases.SUCCEEDED, annotations={TERMINAL_RECORDED: "true"})
    async with setup() as (double, _, notifier):
        notifier.observe(event(marked))
        notifier.observe(event(make_obj(CHILD_REQ), "ADDED"))
        await wait_until(lambda: len(double.of("UpdateActionStatus", "c1")) == 1)
        await settle(notifier)
    assert double.of("UpdateActionStatus", "a0") == []
    assert double.of("RecordAction", "a0") == []


def _signal_ours(by: dict[str, Any]) -> dict[str, Any]:
    value = objects.b64(bool_literal(True).SerializeToString())
    return {"signal": {"value": value, "signalledAt": CREATED, "signalledBy": by}}


def _signal_executor(by: str) -> dict[str, Any]:
    value = objects.b64(bool_literal(True).SerializeToString())
    return {"signalValue": value, "signalledBy": by, "signalledAt": CREATED}


@pytest.mark.parametrize(
    "status",
    [
        _signal_ours({"user": {"id": {"subject": "alice@example.com"}}}),
        _signal_executor("alice@example.com"),
    ],
    ids=["service-shape", "executor-shape"],
)
async def test_signalled_condition_reports_value_and_principal(status: dict[str, Any]) -> None:
    cond = condition_req(aid("q1"), "a0")
    async with setup() as (double, _, notifier):
        notifier.observe(event(make_obj(cond), "ADDED"))
        await wait_until(lambda: double.phases_of("q1") == [phases.PAUSED])
        notifier.observe(event(make_obj(cond, phases.SUCCEEDED, rv=3, status=status)))
        await wait_until(lambda: len(double.phases_of("q1")) == 2)

    record = double.of("RecordAction", "q1")[0]
    assert record.condition.name == "approve"
    paused, succeeded = double.of("UpdateActionStatus", "q1")
    assert not paused.HasField("output") and not paused.HasField("principal")
    assert succeeded.status.phase == phases.SUCCEEDED
    assert succeeded.output == bool_literal(True)
    assert succeeded.principal.user.id.subject == "alice@example.com"


async def test_deleted_action_reported_aborted_with_reason_and_not_marked() -> None:
    annotations = {
        naming.ANNOTATION_ABORT_REASON: "user asked",
        naming.ANNOTATION_ABORTED_BY: '{"user": {"id": {"subject": "bob"}}}',
    }
    running_child = make_obj(CHILD_REQ, phases.RUNNING, annotations=annotations)
    async with setup() as (double, store, notifier):
        notifier.observe(event(running_child, "DELETED"))
        await wait_until(lambda: double.phases_of("c1") == [phases.ABORTED])
        await settle(notifier)
    aborted = double.of("UpdateActionStatus", "c1")[0]
    assert aborted.abort_reason == "user asked"
    assert aborted.principal.user.id.subject == "bob"
    assert store.patches == []  # the object is gone: nothing to mark


async def test_trace_recorded_with_its_spec_and_times() -> None:
    trace = trace_req(aid("t1"), "a0", start_time={"seconds": 100}, end_time={"seconds": 160})
    async with setup() as (double, store, notifier):
        obj = make_obj(trace, rv=2)
        store.objects[name_of(obj)] = obj
        notifier.observe(event(obj, "ADDED"))
        await wait_until(lambda: store.marked() == [name_of(obj)])
    assert double.of("RecordAction", "t1")[0].trace.name == "tr"
    status = double.of("UpdateActionStatus", "t1")[0].status
    assert (status.phase, status.start_time.seconds, status.end_time.seconds) == (
        phases.SUCCEEDED, 100, 160,
    )  # fmt: skip


async def test_in_band_rejection_is_logged_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actions.runservice")
    double = RunServiceDouble(reject={"c1"})
    refused = make_obj(CHILD_REQ, phases.FAILED)
    async with setup(refused, double=double, senders=1) as (_, store, notifier):
        notifier.observe(event(refused, "ADDED"))
        notifier.observe(event(make_obj(CHILD2_REQ), "ADDED"))
        await wait_until(lambda: len(double.of("UpdateActionStatus", "c2")) == 1)
        await settle(notifier, 0.3)
    assert len(double.of("RecordAction", "c1")) == 1
    assert len(double.of("UpdateActionStatus", "c1")) == 1
    assert notifier.metrics.rejected == 2
    assert notifier.metrics.retries == 0
    # Not acknowledged, so not marked: a restart reports it once more.
    assert name_of(refused) not in store.marked()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and "RecordAction" in refusals[0] and name_of(refused) in refusals[0]
    assert "code 9" in refusals[0]


async def test_record_already_there_counts_as_recorded() -> None:
    """After a restart the run service may answer RecordAction with ALREADY_EXISTS: that
    is what was asked for, not a refusal."""
    done = make_obj(ROOT_REQ, phases.SUCCEEDED)
    async with setup(done, double=RunServiceDouble(already={"a0"})) as (_, store, notifier):
        notifier.observe(event(done, "ADDED"))
        await wait_until(lambda: store.marked() == [name_of(done)])
    assert notifier.metrics.rejected == 0
    assert notifier.metrics.records == 1


async def test_permanent_error_code_is_not_retried() -> None:
    double = RunServiceDouble(fail=Code.INVALID_ARGUMENT)
    async with setup(double=double) as (_, _store, notifier):
        notifier.observe(event(make_obj(ROOT_REQ), "ADDED"))
        await wait_until(lambda: double.attempts == 2)  # RecordAction, UpdateActionStatus
        await settle(notifier, 0.3)
    assert double.attempts == 2
    assert notifier.metrics.rejected == 2


async def test_retries_with_backoff_while_down_then_delivers() -> None:
    """Nothing listens on the port at first (connection refused), then the run service
    answers UNAVAILABLE, then it works: the terminal status arrives and is marked."""
    port = free_port()
    done = make_obj(ROOT_REQ, phases.SUCCEEDED)
    store = FakeStore(done)
    async with running(f"http://127.0.0.1:{port}", store) as notifier:
        notifier.observe(event(done, "ADDED"))
        await wait_until(lambda: notifier.metrics.retries >= 3)
        double = RunServiceDouble(fail=Code.UNAVAILABLE)
        async with served(double, port):
            await wait_until(lambda: double.attempts >= 2)
            double.fail = None
            await wait_until(lambda: store.marked() == [name_of(done)])
    assert double.phases_of("a0") == [phases.SUCCEEDED]
    assert len(double.of("RecordAction")) == 1
    assert notifier.metrics.statuses == 1


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    notifier = RunServiceNotifier(
        ConnectRunServiceClient("http://127.0.0.1:9"),
        FakeStore(),
        backoff_base=0.1,
        backoff_max=2.0,
        rng=random.Random(1),
    )
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0], start=1):
        delays = [notifier.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d < ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered
    assert notifier.backoff(10_000) < 2.0


async def test_observe_never_blocks_while_the_run_service_hangs() -> None:
    """observe() is synchronous: it cannot wait for the network. With every call hanging,
    the buffer stays bounded, intermediate statuses are dropped and counted, terminal ones
    are kept; once the run service answers again they all arrive."""
    assert not inspect.iscoroutinefunction(RunServiceNotifier.observe)
    double = RunServiceDouble(hang=True)
    finals = [make_obj(task_req(aid(f"f{i}"), "a0"), phases.SUCCEEDED) for i in range(20)]
    async with setup(*finals, double=double, buffer_size=50, call_timeout=0.2) as (
        _, store, notifier,
    ):  # fmt: skip
        for i in range(1000):
            notifier.observe(event(make_obj(task_req(aid(f"l{i}"), "a0")), "ADDED"))
            if i % 50 == 0:
                notifier.observe(event(finals[i // 50], "MODIFIED"))
        assert notifier.buffered() <= 50 + 4  # capacity + one aside per sender
        assert notifier.metrics.dropped > 0
        assert notifier.metrics.overflowed == 0
        await wait_until(lambda: notifier.metrics.retries >= 2)  # calls timed out
        double.hang = False
        double.released.set()
        await wait_until(lambda: len(store.marked()) == 20, seconds=20)
    reported = {r.action_id.name for r in double.of("UpdateActionStatus")}
    assert {f"f{i}" for i in range(20)} <= reported


async def test_terminal_overflow_is_recovered_by_listing_the_store() -> None:
    """More terminal statuses than the buffer holds: the ones refused are found again by
    listing the store once the buffer has drained."""
    double = RunServiceDouble(hang=True)
    finals = [make_obj(task_req(aid(f"f{i}"), "a0"), phases.FAILED) for i in range(12)]
    async with setup(*finals, double=double, buffer_size=4, rescan_delay=0.05) as (
        _, store, notifier,
    ):  # fmt: skip
        for obj in finals:
            notifier.observe(event(obj, "ADDED"))
        assert notifier.metrics.overflowed > 0
        double.hang = False
        double.released.set()
        await wait_until(lambda: len(set(store.marked())) == 12, seconds=20)
    assert store.lists >= 1
    assert notifier.metrics.scans >= 1


async def test_hanging_calls_are_bounded_by_the_call_timeout() -> None:
    double = RunServiceDouble(hang=True)
    async with setup(double=double, call_timeout=0.1) as (_, _store, notifier):
        notifier.observe(event(make_obj(ROOT_REQ), "ADDED"))
        with trio.fail_after(5):
            await wait_until(lambda: notifier.metrics.retries >= 3)
        assert double.calls == []


# --------------------------------------------------------------------------- restarts


async def _fill(store: Any, *objs: KubeObject) -> None:
    """Create ``objs`` (parents first) with their status, as the service would."""
    uids: dict[str, str] = {}
    for obj in objs:
        status = obj.pop("status")
        meta = obj["metadata"]
        for key in ("resourceVersion", "creationTimestamp", "uid"):
            meta.pop(key, None)
        for ref in meta.get("ownerReferences", ()):
            ref["uid"] = uids[ref["name"]]
        created = await store.create(obj)
        uids[meta["name"]] = created["metadata"]["uid"]
        created["status"] = status
        await store.update_status(created)


@asynccontextmanager
async def store_of(backend: str) -> AsyncIterator[Any]:
    from actions_harness import open_emulator, open_store

    if backend == "embedded":
        store = await open_store("embedded", namespace=NAMESPACE)
        try:
            yield store
        finally:
            await store.aclose()
        return
    async with open_emulator() as emulator:
        store = await open_store("kubernetes", emulator, namespace=NAMESPACE)
        try:
            yield store
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()


@pytest.mark.parametrize("backend", ["embedded", "kubernetes"])
async def test_terminal_status_re_reported_after_a_restart_until_marked(backend: str) -> None:
    done = make_obj(ROOT_REQ, phases.FAILED)
    live = make_obj(CHILD_REQ, phases.RUNNING)
    async with store_of(backend) as store:
        await _fill(store, done, live)
        # First life: the run service is down; the process stops before it answers.
        async with running(f"http://127.0.0.1:{free_port()}", store, scan_on_start=True) as n1:
            await wait_until(lambda: n1.metrics.retries >= 2)
        first = await store.get(name_of(done))
        assert TERMINAL_RECORDED not in (first["metadata"].get("annotations") or {})

        # Second life: the start-up listing reports every unmarked object.
        double = RunServiceDouble()
        async with served(double) as url, running(url, store, scan_on_start=True) as n2:
            await wait_until(lambda: n2.metrics.marked == 1)
            await wait_until(lambda: double.phases_of("c1") == [phases.RUNNING])
        assert double.phases_of("a0") == [phases.FAILED]
        stored = await store.get(name_of(done))
        assert stored["metadata"]["annotations"][TERMINAL_RECORDED] == "true"

        # Third life: the marked object is not reported again; the live one is.
        double3 = RunServiceDouble()
        async with served(double3) as url, running(url, store, scan_on_start=True) as n3:
            await wait_until(lambda: double3.phases_of("c1") == [phases.RUNNING])
            n3.observe(event(stored))  # the fan-out's initial events may repeat it
            await settle(n3)
        assert double3.of("RecordAction", "a0") == []
        assert double3.of("UpdateActionStatus", "a0") == []


async def test_marked_objects_from_upstream_are_ignored() -> None:
    """An upstream deployment marks with a label of the same key."""
    obj = make_obj(ROOT_REQ, phases.SUCCEEDED)
    obj["metadata"]["labels"][TERMINAL_RECORDED] = "true"
    async with setup(obj, scan_on_start=True) as (double, _, notifier):
        await wait_until(lambda: notifier.metrics.scans == 1)
        notifier.observe(event(obj))
        await settle(notifier)
    assert double.calls == []


async def test_resync_reports_what_the_events_missed() -> None:
    """After a gap in the events (the change stream reopened without replay), resync()
    lists the store and reports every unmarked object, terminal or not."""
    done = make_obj(ROOT_REQ, phases.SUCCEEDED, rv=4)
    live = make_obj(CHILD_REQ, phases.RUNNING, rv=5)
    async with setup(done, live, rescan_delay=0.01) as (double, store, notifier):
        notifier.observe(event(make_obj(ROOT_REQ, phases.RUNNING, rv=2), "ADDED"))
        await wait_until(lambda: double.phases_of("a0") == [phases.RUNNING])
        notifier.resync()
        await wait_until(lambda: store.marked() == [name_of(done)])
        await wait_until(lambda: double.phases_of("c1") == [phases.RUNNING])
    assert double.phases_of("a0") == [phases.RUNNING, phases.SUCCEEDED]
    assert len(double.of("RecordAction", "a0")) == 1


async def test_a_failed_mark_is_retried_through_a_store_listing() -> None:
    """The run service has the terminal status but the store refuses the annotation:
    the notifier lists the store later and marks it then, without reporting twice."""
    done = make_obj(ROOT_REQ, phases.FAILED)
    async with setup(done, rescan_delay=0.01) as (double, store, notifier):
        store.fail_patches = MARK_ATTEMPTS
        notifier.observe(event(done, "ADDED"))
        await wait_until(lambda: notifier.metrics.mark_failures == 1)
        await wait_until(lambda: store.marked() == [name_of(done)])
    assert notifier.metrics.marked == 1
    assert double.phases_of("a0") == [phases.FAILED]
    assert store.lists >= 1


async def test_a_name_used_again_after_a_delete_is_a_new_action() -> None:
    first = make_obj(ROOT_REQ, phases.SUCCEEDED, annotations={TERMINAL_RECORDED: "true"})
    again = make_obj(ROOT_REQ, phases.QUEUED, rv=7)
    again["metadata"]["uid"] = "another-uid"
    async with setup() as (double, _, notifier):
        notifier.observe(event(first))
        notifier.observe(event(first, "DELETED"))
        notifier.observe(event(again, "ADDED"))
        await wait_until(lambda: double.phases_of("a0") == [phases.QUEUED])
    assert len(double.of("RecordAction", "a0")) == 1


def test_metrics_are_exported_at_scrape_time() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from actions.runservice import RunServiceCollector

    notifier = RunServiceNotifier(ConnectRunServiceClient("http://127.0.0.1:9"), FakeStore())
    registry = CollectorRegistry()
    holder: list[RunServiceNotifier | None] = [None]
    registry.register(RunServiceCollector(lambda: holder[0]))
    assert b"actions_run_service" not in generate_latest(registry)
    holder[0] = notifier
    notifier.observe(event(make_obj(ROOT_REQ), "ADDED"))
    text = generate_latest(registry).decode()
    assert "actions_run_service_events_observed_total 1.0" in text
    assert "actions_run_service_buffered 1.0" in text
    assert "actions_run_service_reachable 1.0" in text


# --------------------------------------------------------------------------- the buffer


def _item(rv: int, *, final: bool = False, obj: bool = True) -> Pending:
    return Pending({"rv": rv} if obj else None, rv, False, final)


def test_buffer_coalesces_per_action_and_keeps_the_newest_state() -> None:
    buffer = PendingBuffer(4)
    assert buffer.offer("a", _item(1)) is Offer.QUEUED
    assert buffer.offer("b", _item(2)) is Offer.QUEUED
    assert buffer.offer("a", _item(3)) is Offer.MERGED
    assert buffer.offer("a", _item(2)) is Offer.MERGED  # older: the newer one stays
    assert len(buffer) == 2
    name, item = buffer.take() or ("", _item(0))
    assert (name, item.rv) == ("a", 3)  # "a" kept its place in line


def test_buffer_full_drops_intermediate_and_evicts_for_final_states() -> None:
    buffer = PendingBuffer(2)
    buffer.offer("a", _item(1))
    buffer.offer("b", _item(1, final=True))
    assert buffer.offer("c", _item(1)) is Offer.DROPPED
    assert buffer.offer("d", _item(1, final=True)) is Offer.EVICTED  # "a" made room
    assert buffer.offer("e", _item(1, final=True)) is Offer.OVERFLOW
    taken = [buffer.take(), buffer.take(), buffer.take()]
    assert [t[0] for t in taken if t] == ["b", "d"]


def test_buffer_holds_newer_states_of_a_busy_action_aside() -> None:
    buffer = PendingBuffer(1)
    buffer.offer("a", _item(1))
    assert buffer.take() is not None
    assert buffer.take() is None
    assert buffer.offer("a", _item(2)) is Offer.QUEUED  # aside: not sent concurrently
    assert buffer.offer("a", Pending(None, promote=aid("a"))) is Offer.MERGED
    assert buffer.take() is None
    assert buffer.done("a") is True
    name, item = buffer.take() or ("", _item(0))
    assert (name, item.rv, item.promote) == ("a", 2, aid("a"))  # promotion kept the obj
    assert buffer.done("a") is False
    buffer.offer("b", _item(1))
    buffer.discard("b")
    assert len(buffer) == 0


# --------------------------------------------------------------------------- wiring


def test_notifier_for_is_off_without_a_url() -> None:
    assert notifier_for(None, FakeStore()) is None
    assert notifier_for("", FakeStore()) is None
    with pytest.raises(ValueError, match="http"):
        notifier_for("localhost:8090", FakeStore())
    assert url_problem("http://run-service.flyte:8090") is None
    assert url_problem("https://10.0.0.1") is None
    assert "Port out of range" in (url_problem("http://host:99999") or "")
    assert "host" in (url_problem("http:///path") or "")


async def test_events_from_the_actions_service_end_to_end() -> None:
    """Real objects: the Actions Service writes to the embedded store, the store's change
    stream feeds observe(), the notifier reports and marks."""
    from actions_harness import open_env, update_req

    double = RunServiceDouble()
    async with open_env("direct") as env, served(double) as url:
        async with running(url, env.store) as notifier, trio.open_nursery() as pump:
            send, receive = trio.open_memory_channel[WatchEvent](100)

            async def feed() -> None:
                async for ev in receive:
                    notifier.observe(ev)

            await pump.start(env.store.run_events, send)
            pump.start_soon(feed)
            client = env.client
            await client.enqueue(task_req(aid("a0"), run_spec={}))
            await client.enqueue(task_req(aid("c1"), "a0"))
            await client.enqueue(condition_req(aid("q1"), "a0"))
            await client.update(update_req(aid("c1"), phases.RUNNING))
            await client.update(update_req(aid("c1"), phases.SUCCEEDED))
            signal = apb.SignalRequest(
                action_id=aid("q1"), parent_action_name="a0", value=bool_literal(True)
            )
            signal.signalled_by.user.id.subject = "carol"
            await client.signal(signal)
            await wait_until(lambda: notifier.metrics.marked == 2)
            pump.cancel_scope.cancel()

    assert sorted(r.action_id.name for r in double.of("RecordAction")) == ["a0", "c1", "q1"]
    assert double.phases_of("c1")[-1] == phases.SUCCEEDED
    assert phases.RUNNING in double.phases_of("a0")
    final = double.of("UpdateActionStatus", "q1")[-1]
    assert final.status.phase == phases.SUCCEEDED
    assert final.output == bool_literal(True)
    assert final.principal.user.id.subject == "carol"


# --------------------------------------------------------------------------- interop


@pytest.fixture(scope="module")
def official_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("internal_run_service_connect")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gen-flyteidl2-connect.py"),
            "--out",
            str(out),
            "--proto",
            "flyteidl2/workflow/internal_run_service.proto",
        ],
        check=True,
    )
    return out


@contextmanager
def official_server(stubs: Path, calls: Path) -> Iterator[str]:
    script = ROOT / "tests" / "support" / "run_service_official.py"
    with (calls.parent / "official.log").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--stubs", str(stubs), "--calls", str(calls)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    try:
        line = _readline_with_timeout(proc, 30)
        assert line, (calls.parent / "official.log").read_text()
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        _stop(proc)


async def test_interop_with_the_official_connectrpc_server(
    official_stubs: Path, tmp_path: Path
) -> None:
    calls_file = tmp_path / "calls.jsonl"
    calls_file.touch()

    def calls() -> list[dict[str, Any]]:
        return [json.loads(line) for line in calls_file.read_text().splitlines() if line]

    done = make_obj(ROOT_REQ, phases.SUCCEEDED, status={"attempts": 1})
    refused = make_obj(task_req(aid("reject1"), "a0"), phases.FAILED)
    cond = condition_req(aid("q1"), "a0")
    signalled = make_obj(
        cond, phases.SUCCEEDED, status=_signal_ours({"user": {"id": {"subject": "dana"}}})
    )
    store = FakeStore(done, refused, signalled)
    with official_server(official_stubs, calls_file) as url:
        async with running(url, store, scan_on_start=True) as notifier:
            await wait_until(lambda: notifier.metrics.marked == 2, seconds=20)
            await wait_until(lambda: notifier.metrics.rejected == 2)
            notifier.observe(event(make_obj(CHILD_REQ), "ADDED"))
            await wait_until(lambda: notifier.metrics.records == 3)

    seen = calls()
    by_action: dict[str, list[dict[str, Any]]] = {}
    for call in seen:
        by_action.setdefault(call["request"]["actionId"]["name"], []).append(call)
    assert by_action["a0"][0]["method"] == "RecordAction"
    a0_statuses = [c["request"] for c in by_action["a0"] if c["method"] == "UpdateActionStatus"]
    assert a0_statuses[0]["status"]["phase"] == "ACTION_PHASE_SUCCEEDED"
    assert a0_statuses[0]["status"]["attempts"] == 1
    q1 = [c["request"] for c in by_action["q1"] if c["method"] == "UpdateActionStatus"][-1]
    output = json_format.ParseDict(q1["output"], Literal())
    assert output == bool_literal(True)
    assert q1["principal"]["user"]["id"]["subject"] == "dana"
    # Refused in-band: each call once, and the object stays unmarked.
    assert [c["method"] for c in by_action["reject1"]] == ["RecordAction", "UpdateActionStatus"]
    assert sorted(store.marked()) == sorted([name_of(done), name_of(signalled)])
    assert by_action["c1"][0]["request"]["parent"] == "a0"
