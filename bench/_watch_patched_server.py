"""``actions-service`` with a prototype patch, for A/B runs of the watch bench:

    python bench/watch_fanout.py --server-script bench/_watch_patched_server.py

``WATCH_BENCH_PATCHES`` (comma-separated, default ``inline``):

- ``inline``: the embedded store runs every SQLite call through ``trio.to_thread`` on
  one connection behind a ``CapacityLimiter(1)``: about 80 us of CPU per round trip on
  the 2-core VM, about four per Update and its fan-out, and one queue shared by request
  handlers, the change-log follower and the fan-out's ``latest()`` reads. With
  ``--memory`` the queries take microseconds, so here they run on the trio thread
  (after a checkpoint) and never queue. Only sound for the in-memory store: a
  file-backed one can wait on another process's lock.

(The hypercorn priority-tree and write-coalescing prototypes that were here are now
``FairScheduler`` and ``WriteCoalescer`` in ``connect_proto/_server/``.)
Nothing here is used by the service itself; see docs/benchmarks.md "Watch fan-out".
"""

from __future__ import annotations

import os
import sys
from typing import Any

import trio
import trio.lowlevel


def apply_inline() -> None:
    from actions.store import _sqlite

    async def run(self: Any, fn: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return self._call(fn)

    _sqlite.Connection.run = run


PATCHES = {"inline": apply_inline}

if __name__ == "__main__":
    for name in filter(None, os.environ.get("WATCH_BENCH_PATCHES", "inline").split(",")):
        PATCHES[name.strip()]()
    from actions.cli import main

    sys.exit(main())
