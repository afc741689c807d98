"""The API server out of reach while the service runs on the Kubernetes store: the log
says so once per watch (naming the resource and the API server), not once per retry, and
once when it answers again; the store wrapper, the fan-out and readiness add nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import trio
from actions_harness import (
    WatcherView,
    aid,
    assert_no_leaked_threads,
    open_env,
    task_req,
    update_req,
)
from flyteidl2.common import phase_pb2 as P

from connect_proto._errors import Code, RpcError

ROOT = aid("a0")
RESOURCES = ("taskactions.flyte.org", "actiontraces.flyte.org")


@pytest.fixture(autouse=True, scope="module")
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert_no_leaked_threads(before)


def _count(caplog: pytest.LogCaptureFixture, resource: str, text: str) -> int:
    """Informer lines about ``resource`` containing ``text``: warnings for "unreachable"
    (an INFO line may quote the same cause for a dropped stream it resumes at once)."""
    level = logging.WARNING if text == "unreachable" else logging.INFO
    return sum(
        1
        for r in caplog.records
        if r.name == "actions.store._informer"
        and r.levelno >= level
        and resource in r.getMessage()
        and text in r.getMessage()
    )


def actions_lines(records: list[logging.LogRecord], level: int) -> list[logging.LogRecord]:
    return [r for r in records if r.name.startswith("actions") and r.levelno >= level]


async def test_api_server_unreachable_is_one_line_per_watch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with open_env("wire", backend="kubernetes") as env:
        emu, store = env.emulator, env.store
        await env.client.enqueue(task_req(ROOT))
        await env.client.enqueue(task_req(aid("c0"), parent="a0"))
        async with trio.open_nursery() as nursery:
            view = WatcherView(env.client, ROOT)
            await nursery.start(view.run)
            emu.refuse_connections()
            with trio.fail_after(20):
                while store.ready()[0]:  # noqa: ASYNC110 - the informer thread's state
                    await trio.sleep(0.02)
            with pytest.raises(RpcError) as info:
                await env.client.update(update_req(aid("c0"), P.ACTION_PHASE_RUNNING))
            assert info.value.code == Code.UNAVAILABLE
            # The informers retry a few times meanwhile (with backoff).
            await trio.sleep(2.0)
            emu.accept_connections()
            with trio.fail_after(20):
                while store.ready() != (True, "ok"):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                # Every watch that reported the outage also reports its end (the trace
                # watch may be in its back-off still when the store is ready).
                while any(  # noqa: ASYNC110 - log records from other threads
                    _count(caplog, r, "unreachable") > _count(caplog, r, "works again after")
                    for r in RESOURCES
                ):
                    await trio.sleep(0.05)
            await env.client.update(update_req(aid("c0"), P.ACTION_PHASE_RUNNING))
            nursery.cancel_scope.cancel()

    # One line per watch and outage (not per retry), each naming its resource and the
    # API server, and one when it answers again. A request answered just as the server
    # went away ends an outage early; the next failure is then a new one, announced again.
    warnings = actions_lines(caplog.records, logging.WARNING)
    assert warnings and {r.name for r in warnings} == {"actions.store._informer"}, warnings
    messages = [r.getMessage() for r in warnings]
    assert all(emu.url in m and "unreachable" in m for m in messages), messages
    for resource in RESOURCES:
        assert _count(caplog, resource, "unreachable") == _count(
            caplog, resource, "works again after"
        ), messages
    assert len(messages) <= 2 * len(RESOURCES), messages  # retries were many more
