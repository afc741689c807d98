"""The fan-out's change stream failing and being reopened: one log line for the first
failure (its cause named, the traceback only at DEBUG), repeats counted, growing pauses
between attempts, every stream resynced, and one line when the stream is back.

Driven by a fake event source on trio's autojump clock: the pauses are asserted exactly
and no test waits for real.
"""

from __future__ import annotations

import logging
from itertools import pairwise

import pytest
import trio
import trio.testing

from actions.fanout import HEALTHY_STREAM_SECONDS, FanOut
from actions.objects import WatchKey
from actions.store.base import WatchEvent
from actions.store.errors import StoreUnavailable
from connect_proto._errors import Code, RpcError

KEY = WatchKey("o", "p", "d", "r1", "a0")
CAUSE = "disk I/O error"


class FlakySource:
    """Opens; when ``broken`` is set, the open stream fails and then the next
    ``failures`` opens fail too; after that it opens and follows until ``broken`` again
    (or ends, with ``end_cleanly``)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []  # trio.current_time() of each open
        self.ended_at = 0.0  # when the last open stream ended
        self.opened = 0
        self.broken = trio.Event()
        self.end_cleanly = False
        self._open_changed = trio.Event()

    async def wait_opened(self, count: int) -> None:
        while self.opened < count:
            await self._open_changed.wait()

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.attempts.append(trio.current_time())
        if self.opened and self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable(CAUSE)
        self.opened += 1
        self.broken = trio.Event()
        self._open_changed.set()
        self._open_changed = trio.Event()
        task_status.started()
        await self.broken.wait()
        self.ended_at = trio.current_time()
        if not self.end_cleanly:
            raise StoreUnavailable(CAUSE)


def fanout_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "actions.fanout" and r.levelno == level]


def pauses(source: FlakySource) -> list[float]:
    times = source.attempts
    return [round(b - a, 3) for a, b in pairwise(times)]


async def test_failures_logged_once_backed_off_resynced_and_recovery_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actions.fanout")
    source = FlakySource(failures=8)
    resyncs: list[float] = []
    fanout = FanOut(source, resyncs=[lambda: resyncs.append(trio.current_time())])
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        with fanout.subscribe(KEY) as sub:
            source.broken.set()
            with pytest.raises(RpcError) as info:
                await sub.next_batch()
        assert info.value.code == Code.UNAVAILABLE and "resync" in info.value.message
        await source.wait_opened(2)
        await trio.testing.wait_all_tasks_blocked()  # the fan-out sees the open, too
        assert fanout.running
        # 0.1 s doubling, bounded at 5 s; each failure resynced the streams.
        assert pauses(source) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
        assert len(resyncs) == 9 and fanout.metrics.source_restarts == 9
        assert fanout.metrics.subscriber_resyncs == 1
        nursery.cancel_scope.cancel()

    errors = fanout_lines(caplog, logging.ERROR)
    assert [r.getMessage() for r in errors] == [
        f"store change stream failed: StoreUnavailable: {CAUSE}; reopening"
    ]
    assert errors[0].exc_info is None  # no traceback unless DEBUG
    assert not fanout_lines(caplog, logging.WARNING)
    back = [r.getMessage() for r in fanout_lines(caplog, logging.INFO)]
    assert back == ["store change stream back after 9 failures"]


async def test_a_long_outage_is_summed_up_and_the_traceback_shown_at_debug(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actions.fanout")
    source = FlakySource(failures=20)
    fanout = FanOut(source)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        source.broken.set()
        await source.wait_opened(2)
        nursery.cancel_scope.cancel()
    errors = fanout_lines(caplog, logging.ERROR)
    # 21 failures over ~81 s: the first, then one summary after a minute.
    assert len(errors) == 2, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None  # DEBUG: the traceback is kept
    assert "still failing: 17 more in 61s" in errors[1].getMessage(), errors[1].getMessage()
    debug = [r for r in fanout_lines(caplog, logging.DEBUG) if "again" in r.getMessage()]
    assert len(debug) == 21 - 2
    info = [r.getMessage() for r in fanout_lines(caplog, logging.INFO)]
    assert info == ["store change stream back after 21 failures"]


async def test_a_stream_that_worked_for_a_while_is_reopened_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actions.fanout")
    source = FlakySource(failures=3)
    fanout = FanOut(source)
    async with trio.open_nursery() as nursery:
        await nursery.start(fanout.run)
        source.broken.set()
        await source.wait_opened(2)
        await trio.sleep(HEALTHY_STREAM_SECONDS)  # the reopened stream works a while
        source.end_cleanly = True
        source.broken.set()
        await source.wait_opened(3)
        nursery.cancel_scope.cancel()
    assert pauses(source)[:3] == [0.1, 0.2, 0.4]
    assert source.attempts[-1] - source.ended_at == pytest.approx(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "actions.fanout"]
    assert lines == [
        f"store change stream failed: StoreUnavailable: {CAUSE}; reopening",
        "store change stream back after 4 failures",
        "store change stream ended; reopening",
        "store change stream back after 1 failures",
    ]
