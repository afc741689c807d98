"""The watcher side of bench/watch_fanout.py: a separate process holding many
WatchForUpdates streams (grpcio's asyncio API over the flyteidl2 stubs: HTTP/2 framing
in grpc's C core, streams multiplexed over a few h2c connections).

Driven over a ``multiprocessing`` pipe by the orchestrator with commands (tuples):

- ``("open", target, parents, per_parent, streams_per_conn)``: open ``per_parent``
  streams on each parent ``(run, action)``; answer ``("ready", opened, seconds)`` once
  every stream has read its snapshot and sentinel (or ``("error", text)``).
- ``("collect",)``: answer ``("records", records, failures)`` and clear: every update
  received since the last collect as ``(stream, action_name, seq, t_ns)`` (seq: the last
  path segment of ``output_uri``, the attempt number; ``t_ns``: ``time.monotonic_ns()``,
  CLOCK_MONOTONIC, comparable with the orchestrator's), and stream failures as text.
- ``("close",)``: cancel every stream and close the channels; answer ``("closed",)``.
- ``("exit",)``: leave.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from typing import Any

import grpc
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub
from flyteidl2.common.identifier_pb2 import ActionIdentifier

ORG, PROJECT, DOMAIN = "bench", "p", "development"

CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    # A channel of its own per connection: without this, channels with equal arguments
    # share one subchannel (one TCP connection) from the global pool.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def action_id(run: str, name: str) -> ActionIdentifier:
    return ActionIdentifier(
        run={"org": ORG, "project": PROJECT, "domain": DOMAIN, "name": run}, name=name
    )


class Watchers:
    def __init__(self) -> None:
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.records: list[tuple[int, str, int, int]] = []
        self.failures: list[str] = []
        self.synced = 0
        self.all_synced = asyncio.Event()
        self.expected = 0

    async def open(
        self,
        target: str,
        parents: list[tuple[str, str]],
        per_parent: int,
        streams_per_conn: int,
    ) -> tuple[int, float]:
        total = len(parents) * per_parent
        conns = max(1, -(-total // streams_per_conn))
        self.channels = [
            grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(conns)
        ]
        stubs = [ActionsServiceStub(ch) for ch in self.channels]
        self.synced, self.expected = 0, total
        self.all_synced = asyncio.Event()
        t0 = time.monotonic()
        stream = 0
        for run, name in parents:
            request = pb.WatchForUpdatesRequest(parent_action_id=action_id(run, name))
            for _ in range(per_parent):
                stub = stubs[stream % conns]
                self.tasks.append(asyncio.create_task(self._watch(stub, request, stream)))
                stream += 1
                if stream % 200 == 0:
                    await asyncio.sleep(0)  # let the first streams start
        if total:
            await asyncio.wait_for(self.all_synced.wait(), timeout=300)
        return total, time.monotonic() - t0

    async def _watch(self, stub: ActionsServiceStub, request: Any, stream: int) -> None:
        records = self.records  # collect() empties this list in place
        clock = time.monotonic_ns
        call = stub.WatchForUpdates(request)
        synced = False
        try:
            async for msg in call:
                t = clock()
                if not synced:
                    if msg.HasField("control_message"):
                        synced = True
                        self.synced += 1
                        if self.synced == self.expected:
                            self.all_synced.set()
                    continue
                update = msg.action_update
                uri = update.output_uri
                records.append((stream, update.action_id.name, int(uri[uri.rfind("/") + 1 :]), t))
            self.failures.append(f"stream {stream}: ended by the server")
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            self.failures.append(f"stream {stream}: {exc.code().name}: {exc.details()}")
        except Exception as exc:
            self.failures.append(f"stream {stream}: {type(exc).__name__}: {exc}")

    def collect(self) -> tuple[list[tuple[int, str, int, int]], list[str]]:
        records, failures = self.records[:], self.failures[:]
        self.records.clear()
        self.failures.clear()
        return records, failures

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        for ch in self.channels:
            await ch.close()
        self.channels = []


async def _main(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    watchers = Watchers()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        op = command[0]
        try:
            if op == "open":
                opened, seconds = await watchers.open(*command[1:])
                conn.send(("ready", opened, seconds))
            elif op == "collect":
                conn.send(("records", *watchers.collect()))
            elif op == "close":
                await watchers.close()
                conn.send(("closed",))
            elif op == "exit":
                await watchers.close()
                return
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def run(conn: Connection) -> None:
    """The process entry point."""
    try:
        asyncio.run(_main(conn))
    finally:
        conn.close()
