"""A store that stops reading or writing while the server runs: ``/readyz`` says so,
the log says it once (then at most once a minute), and callers get UNAVAILABLE."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import httpx
import pytest
import trio
from actions_harness import aid, task_req
from flyteidl2.actions import actions_service_pb2 as pb

from actions.app import ActionsApplication, open_memory_store
from actions.config import Config
from actions.log_policy import RepeatLimiter, TracebacksAtDebug, is_logged
from actions.store.base import Store
from actions.store.errors import NotFound, ResourceMissing, StoreUnavailable
from actions.store_health import ObservedStore
from connect_proto._client import ConnectClient
from connect_proto._errors import Code, RpcError
from connect_proto._server.serve import make_config
from connect_proto._server.serve import serve as serve_asgi

SVC = "/flyteidl2.actions.ActionsService/"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Breakable:
    """A store whose writes, or reads, fail while the test says so."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.namespace = inner.namespace
        self.broken_writes: BaseException | None = None
        self.broken_reads: BaseException | None = None

    def ready(self) -> tuple[bool, str]:
        return self._inner.ready()

    async def create(self, obj: Any) -> Any:
        if self.broken_writes is not None:
            raise self.broken_writes
        return await self._inner.create(obj)

    async def create_with_status(self, obj: Any, status: Any) -> Any:
        if self.broken_writes is not None:
            raise self.broken_writes
        return await self._inner.create_with_status(obj, status)

    async def get(self, name: str) -> Any:
        if self.broken_reads is not None:
            raise self.broken_reads
        return await self._inner.get(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _memory() -> Breakable:
    return Breakable(await open_memory_store(Config()))


async def test_write_failures_unready_the_store_and_log_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    inner = await _memory()
    store = ObservedStore(inner, "embedded store /d/flyte.sqlite3", hold=10, clock=clock)
    await store.create(task_obj("a0"))
    assert store.ready() == (True, "ok")

    inner.broken_writes = StoreUnavailable("sqlite: database or disk is full")
    caplog.set_level(logging.INFO, "actions.store_health")
    for second in range(0, 90, 5):  # a failing write every 5 s for 90 s
        clock.now = 100.0 + second
        with pytest.raises(StoreUnavailable):
            await store.create(task_obj(f"b{second}"))
        ok, why = store.ready()
        assert not ok and why == "store cannot write: sqlite: database or disk is full"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "embedded store /d/flyte.sqlite3 cannot write: sqlite: database or disk is full",
        "embedded store /d/flyte.sqlite3 still cannot write (12 failures in 60s): "
        "sqlite: database or disk is full",
    ]
    # Nobody writes for a while: ready again after the hold, so that it is tried again.
    clock.now += 10
    assert store.ready() == (True, "ok")
    # A success clears it at once, and says so.
    clock.now += 1
    with pytest.raises(StoreUnavailable):
        await store.create(task_obj("c0"))
    assert not store.ready()[0]
    inner.broken_writes = None
    await store.create(task_obj("c1"))
    assert store.ready() == (True, "ok")
    assert "writes work again" in caplog.records[-1].getMessage()
    await store.aclose()


async def test_corruption_is_unavailable_and_answers_are_successes() -> None:
    clock = Clock()
    inner = await _memory()
    store = ObservedStore(inner, "embedded store x", clock=clock)
    inner.broken_reads = sqlite3.DatabaseError("database disk image is malformed")
    with pytest.raises(StoreUnavailable, match="embedded store x: database disk image"):
        await store.get("a0")
    assert store.ready() == (False, "store cannot read: database disk image is malformed")
    inner.broken_reads = None
    with pytest.raises(NotFound):  # an answer: the store reads again
        await store.get("a0")
    assert store.ready() == (True, "ok")
    await store.aclose()


async def test_a_failing_change_stream_fails_at_once_and_unreadies_the_store(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingStream:
        namespace = "flyte"

        def ready(self) -> tuple[bool, str]:
            return True, "ok"

        async def run_events(self, send: Any, **kwargs: Any) -> None:
            raise sqlite3.DatabaseError("database disk image is malformed")

    caplog.set_level(logging.INFO, "actions.store_health")
    store = ObservedStore(FailingStream(), "s", clock=trio.current_time)  # type: ignore[arg-type]
    send, _ = trio.open_memory_channel[Any](1)
    for _ in range(6):
        before = trio.current_time()
        with pytest.raises(StoreUnavailable, match="change stream failed: DatabaseError") as info:
            await store.run_events(send)
        # No pause: the caller (the fan-out) owns the back-off between attempts.
        assert trio.current_time() == before
        assert is_logged(info.value)  # so the caller logs its restart at DEBUG only
    assert store.ready() == (False, "store cannot read: database disk image is malformed")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == ["s cannot read: database disk image is malformed"]


async def test_readyz_reports_a_store_that_cannot_write() -> None:
    holder: list[Breakable] = []

    async def breakable(config: Config) -> Store:
        holder.append(await _memory())
        return holder[0]  # type: ignore[return-value]

    application = ActionsApplication(Config(port=0), open_store=breakable)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url) as http, ConnectClient(url) as client:
            assert (await http.get("/readyz")).status_code == 200
            holder[0].broken_writes = sqlite3.OperationalError("disk I/O error")
            with pytest.raises(RpcError) as info:
                await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
            assert info.value.code == Code.UNAVAILABLE and "disk I/O error" in info.value.message
            with trio.fail_after(5):
                while (ready := await http.get("/readyz?verbose")).status_code != 503:  # noqa: ASYNC110 (polling over HTTP)
                    await trio.sleep(0.05)
            assert "[-]store failed" in ready.text
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- log policy


def _record(msg: str, *args: object, level: int = logging.WARNING, exc: bool = False) -> Any:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as error:
            exc_info = (type(error), error, error.__traceback__)
    return logging.LogRecord("x", level, __file__, 1, msg, args, exc_info)


def test_tracebacks_only_at_debug() -> None:
    quiet = TracebacksAtDebug(lambda: False)
    record = _record("store change stream failed; reopening", exc=True)
    assert quiet.filter(record)
    assert record.exc_info is None
    assert record.getMessage() == "store change stream failed; reopening: ValueError: boom"
    loud = TracebacksAtDebug(lambda: True)
    record = _record("failed", exc=True)
    assert loud.filter(record) and record.exc_info is not None


def test_repeats_are_shown_once_per_window() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60, clock=clock)
    shown = []
    for second in range(0, 125):
        clock.now = float(second)
        record = _record("watch of %s failed: %s", "flyte", "404")
        if limiter.filter(record):
            shown.append((second, record.getMessage()))
    assert shown == [
        (0, "watch of flyte failed: 404"),
        (60, "watch of flyte failed: 404 (59 more like it in the last 60s)"),
        (120, "watch of flyte failed: 404 (59 more like it in the last 60s)"),
    ]
    assert limiter.filter(_record("another line"))
    assert limiter.filter(_record("info lines pass", level=logging.INFO))
    assert limiter.filter(_record("info lines pass", level=logging.INFO))


def task_obj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "flyte.org/v1",
        "kind": "TaskAction",
        "metadata": {"name": name, "labels": {}},
        "spec": {"actionName": name},
    }


async def test_a_cause_the_backend_reports_itself_is_not_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A read that meets a missing CRD before the informer does (ResourceMissing: the
    informer reports it): the wrapper logs it at DEBUG only, though the backend still says
    it is ready."""
    inner = await _memory()
    store = ObservedStore(inner, "Kubernetes store", clock=Clock())
    inner.broken_reads = ResourceMissing("CustomResourceDefinition taskactions.flyte.org gone")
    caplog.set_level(logging.DEBUG, "actions.store_health")
    with pytest.raises(StoreUnavailable):
        await store.get("a0")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert inner.ready()[0]  # the backend had not noticed yet
