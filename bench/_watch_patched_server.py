"""``actions-service`` with prototype hypercorn patches, for A/B runs of the watch bench:

    python bench/watch_fanout.py --server-script bench/_watch_patched_server.py
    WATCH_BENCH_PATCHES=rr python bench/watch_fanout.py --server-script ...

``WATCH_BENCH_PATCHES`` (comma-separated, default ``rr``):

- ``rr``: hypercorn 0.18's ``H2Protocol`` asks a ``priority.PriorityTree`` for the next
  stream before every DATA frame it writes. ``PriorityTree.schedule`` pops blocked (idle)
  streams off a heap until it finds an active one and pushes them all back, so a frame
  costs O(streams on the connection) heap operations with Python ``__lt__`` calls.
  Replaced by a FIFO round-robin of the streams that have data (what hypercorn uses of
  the tree, O(1) per call; RFC 9113 deprecated the priority scheme anyway).
- ``flush``: hypercorn writes to the socket after every frame it queues (response
  HEADERS, each DATA frame, trailers). Here ``_flush`` only wakes one flusher task per
  connection, which writes everything queued after one scheduler pass, so a unary
  response is one write. A prototype: it gives up hypercorn's await-on-write
  backpressure (HTTP/2 flow control still bounds what is queued).

- ``inline``: the embedded store runs every SQLite call through ``trio.to_thread`` (about
  80 us of CPU per round trip on the 2-core VM; an Update and its fan-out make about
  four). With ``--memory`` the queries take microseconds, so here they run on the trio
  thread (after a checkpoint). Only sound for the in-memory store: a file-backed one
  can wait on another process's lock.

Nothing here is used by the service itself; see docs/benchmarks.md "Watch fan-out".
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from typing import Any

import priority
import trio
import trio.lowlevel
from hypercorn.events import Closed, RawData
from hypercorn.protocol import h2 as hyper_h2

H2 = hyper_h2.H2Protocol


class RoundRobin:
    """What hypercorn's H2Protocol uses of ``priority.PriorityTree``, O(1) per call."""

    def __init__(self) -> None:
        self._known: set[int] = set()
        self._active: OrderedDict[int, None] = OrderedDict()

    def _check(self, stream_id: int) -> None:
        if stream_id not in self._known:
            raise priority.MissingStreamError(f"Stream {stream_id} not in tree")

    def insert_stream(self, stream_id: int, *args: Any, **kwargs: Any) -> None:
        if stream_id in self._known:
            raise priority.DuplicateStreamError(f"Stream {stream_id} already in tree")
        self._known.add(stream_id)
        self._active[stream_id] = None  # PriorityTree inserts streams active

    def reprioritize(self, stream_id: int, *args: Any, **kwargs: Any) -> None:
        self._check(stream_id)

    def block(self, stream_id: int) -> None:
        self._check(stream_id)
        self._active.pop(stream_id, None)

    def unblock(self, stream_id: int) -> None:
        self._check(stream_id)
        self._active[stream_id] = None

    def remove_stream(self, stream_id: int) -> None:
        self._check(stream_id)
        self._known.discard(stream_id)
        self._active.pop(stream_id, None)

    def __iter__(self) -> RoundRobin:
        return self

    def __next__(self) -> int:
        if not self._active:
            raise priority.DeadlockError("No unblocked streams to schedule.")
        stream_id, _ = self._active.popitem(last=False)
        self._active[stream_id] = None  # to the back: round-robin between busy streams
        return stream_id


def apply_rr() -> None:
    original_init = H2.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.priority = RoundRobin()

    H2.__init__ = __init__


async def _flush(self: Any) -> None:
    event = self.__dict__.get("_bench_dirty")
    if event is None:  # the first flush (initiate): write now, then start the flusher
        data = self.connection.data_to_send()
        if data:
            await self.send(RawData(data=data))
        self._bench_dirty = trio.Event()
        self.task_group.spawn(_flusher, self)
        return
    event.set()


async def _flusher(self: Any) -> None:
    while True:
        await self._bench_dirty.wait()
        self._bench_dirty = trio.Event()
        await trio.lowlevel.checkpoint()  # let the tasks runnable now queue their frames too
        data = self.connection.data_to_send()
        if data:
            await self.send(RawData(data=data))
        if self.closed:
            return


def apply_flush() -> None:
    original_handle = H2.handle

    async def handle(self: Any, event: Any) -> None:
        await original_handle(self, event)
        if isinstance(event, Closed):
            dirty = self.__dict__.get("_bench_dirty")
            if dirty is not None:
                dirty.set()  # the flusher sees ``closed`` and ends

    H2._flush = _flush
    H2.handle = handle


def apply_inline() -> None:
    from actions.store import _sqlite

    async def run(self: Any, fn: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return self._call(fn)

    _sqlite.Connection.run = run


PATCHES = {"rr": apply_rr, "flush": apply_flush, "inline": apply_inline}

if __name__ == "__main__":
    for name in filter(None, os.environ.get("WATCH_BENCH_PATCHES", "rr").split(",")):
        PATCHES[name.strip()]()
    from actions.cli import main

    sys.exit(main())
