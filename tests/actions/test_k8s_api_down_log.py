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
            warnings = actions_lines(caplog.records, logging.WARNING)
            emu.accept_connections()
            with trio.fail_after(20):
                while store.ready() != (True, "ok"):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            await env.client.update(update_req(aid("c0"), P.ACTION_PHASE_RUNNING))
            nursery.cancel_scope.cancel()

    # At most one line per watch (a watch that had not started a request yet may not
    # notice at all), each naming its resource and the API server.
    names = [r.name for r in warnings]
    assert names and set(names) == {"actions.store._informer"}, warnings
    messages = [r.getMessage() for r in warnings]
    assert len(messages) <= len(RESOURCES), messages
    for resource in RESOURCES:
        mine = [m for m in messages if resource in m]
        assert len(mine) <= 1, mine
    assert all(emu.url in m and "unreachable" in m for m in messages), messages
    # ... and one line each when the server answers again.
    back = [
        r.getMessage()
        for r in caplog.records
        if r.name == "actions.store._informer" and "works again after" in r.getMessage()
    ]
    assert len(back) == len(messages), back
    # Nothing else said it louder while the outage lasted.
    assert actions_lines(caplog.records, logging.WARNING) == warnings
