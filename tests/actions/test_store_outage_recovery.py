"""A store outage seen through ObservedStore and the fan-out together: the fan-out's
reopen loop is the only back-off, so the watch streams are served again within its
longest pause (5 s) of the store working again, however long the outage was; and the
outage is one log line, from whoever found its cause.

Driven by a fake store on trio's autojump clock: no test waits for real.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from actions.fanout import FanOut
from actions.log_policy import Outage, is_logged, mark_logged
from actions.objects import WatchKey
from actions.store.base import Store, WatchEvent
from actions.store.errors import StoreUnavailable
from actions.store_health import ObservedStore
from connect_proto._errors import Code, RpcError

KEY = WatchKey("o", "p", "d", "r1", "a0")
MAX_RESTART_DELAY = 5.0  # FanOut's default


class OutageStore:
    """A store whose change stream follows until ``break_at``, then fails at every
    open until ``usable_at`` (trio time). ``backend_knows``: its ``ready()`` reports
    the outage itself, as the Kubernetes store does for a deleted CRD."""

    namespace = "flyte"

    def __init__(self, break_at: float, usable_at: float, *, backend_knows: bool = False) -> None:
        self.break_at = break_at
        self.usable_at = usable_at
        self.backend_knows = backend_knows
        self.opens: list[float] = []  # trio time of every successful open

    def _broken(self) -> bool:
        return self.break_at <= trio.current_time() < self.usable_at

    def ready(self) -> tuple[bool, str]:
        if self.backend_knows and self._broken():
            return False, "resource not served"
        return True, "ok"

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        since: str | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._broken():
            raise StoreUnavailable("disk I/O error")
        self.opens.append(trio.current_time())
        task_status.started()
        if trio.current_time() < self.break_at:
            await trio.sleep_until(self.break_at)
            raise StoreUnavailable("disk I/O error")
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


def observed(store: OutageStore) -> ObservedStore:
    inner: Any = store  # the part of Store the fan-out and these tests use
    return ObservedStore(inner, "test store", clock=trio.current_time)


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("actions") and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("usable_at", [37.3, 200.0, 641.9])
async def test_watches_are_served_within_the_fanout_pause_of_the_store_working_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, usable_at: float
) -> None:
    caplog.set_level(logging.INFO)
    source = OutageStore(break_at=10.0, usable_at=usable_at)
    store = observed(source)
    fanout = FanOut(store)
    readiness: list[tuple[bool, str]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        with fanout.subscribe(KEY) as sub:
            with pytest.raises(RpcError) as info:
                await sub.next_batch()  # the stream breaks: the watcher must resync
        assert info.value.code == Code.UNAVAILABLE and "resync" in info.value.message
        while not fanout.running:
            readiness.append(store.ready())
            await trio.sleep(0.5)
        back = trio.current_time()
        with fanout.subscribe(KEY):
            pass  # watchers are answered again
        assert store.ready() == (True, "ok")  # the stream's reopening was a read that worked
        nursery.cancel_scope.cancel()

    assert source.opens[-1] >= usable_at
    assert back - usable_at <= MAX_RESTART_DELAY + 0.5, (back, usable_at)
    # Not ready throughout the outage (the fan-out's attempts keep it so), saying why.
    assert readiness and all(r == (False, "store cannot read: disk I/O error") for r in readiness)
    # One line for the outage, from ObservedStore, which found it (and a count once a
    # minute while it lasts); the fan-out's restarts on that same failure are DEBUG.
    lines = loud(caplog)
    assert lines[0] == "actions.store_health: test store cannot read: disk I/O error"
    summaries = lines[1:]
    assert len(summaries) == int((usable_at - 10.0) // 60), lines
    assert all(m.startswith("actions.store_health: test store still cannot") for m in summaries)


async def test_an_outage_the_backend_reported_is_not_logged_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = OutageStore(break_at=10.0, usable_at=100.0, backend_knows=True)
    store = observed(source)
    fanout = FanOut(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        await trio.sleep_until(50.0)
        assert store.ready() == (False, "resource not served")
        with pytest.raises(StoreUnavailable) as info:
            await store.run_events(trio.open_memory_channel[WatchEvent](1)[0])
        assert is_logged(info.value)  # a caller that retries on it logs it at DEBUG
        await trio.sleep_until(110.0)
        assert fanout.running
        nursery.cancel_scope.cancel()
    assert loud(caplog) == []  # the backend's own line names the cause
    info_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert not any("back after" in m or "work again" in m for m in info_lines), info_lines


def test_outage_logs_a_cause_logged_elsewhere_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("tests.outage")
    caplog.set_level(logging.DEBUG, logger="tests.outage")
    now = [0.0]
    outage = Outage(logger, clock=lambda: now[0])
    reported = StoreUnavailable("database is locked")
    mark_logged(reported)
    outage.failed("stream failed", reported)
    outage.failed("stream failed", ExceptionGroup("g", [reported]))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]
    # A failure nobody logged yet is announced, even inside the same outage.
    outage.failed("stream failed: new cause", RuntimeError("new cause"))
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == "stream failed: new cause"
    outage.recovered("stream back")
    assert caplog.records[-1].levelno == logging.INFO
    assert caplog.records[-1].getMessage() == "stream back after 3 failures"
    # An outage only ever logged at DEBUG ends at DEBUG.
    outage.failed("stream failed", reported)
    outage.recovered("stream back")
    assert caplog.records[-1].levelno == logging.DEBUG
    assert not is_logged(RuntimeError("x"))
    assert not is_logged(ExceptionGroup("g", [reported, RuntimeError("x")]))


def _check_fake(store: OutageStore) -> Store:
    return store  # type: ignore[return-value]  # only what these tests call
