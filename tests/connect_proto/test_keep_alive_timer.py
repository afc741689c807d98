"""The keep-alive timer: restart and stop in any order leave at most the latest running."""

from __future__ import annotations

import trio
import trio.testing
from hypercorn.trio.task_group import TaskGroup

from connect_proto._server.task_group import KeepAliveTimer


async def test_restart_stop_and_a_cancelled_caller(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[str] = []

    def timer(name: str) -> object:
        async def run() -> None:
            await trio.sleep(1)
            fired.append(name)

        return run

    async with TaskGroup() as group:
        keep_alive = KeepAliveTimer()
        await keep_alive.restart(group, timer("first"))
        await keep_alive.restart(group, timer("second"))  # replaces the first
        await trio.sleep(1.5)
        assert fired == ["second"]
        await keep_alive.restart(group, timer("stopped"))
        await keep_alive.stop()
        await trio.sleep(1.5)
        assert fired == ["second"]
        # A caller that is already cancelled still gets its timer started.
        with trio.CancelScope() as scope:
            scope.cancel()
            await keep_alive.restart(group, timer("from a cancelled caller"))
        await trio.sleep(1.5)
        assert fired == ["second", "from a cancelled caller"]
