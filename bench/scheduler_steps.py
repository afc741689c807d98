"""Trips through trio's scheduler per unary Update, and where the handler's task waits.

Runs ``actions-service serve`` in this process with a trio instrument, loads it with
``h2load`` (the no-op Update of side_by_side.py, 8 connections x 8 streams), stops it,
and prints task steps per request by task, then the places a request's task suspended
(the innermost frames of its await chain), most frequent first. A step is one turn of
the scheduler: each costs a trip through trio's run loop, and a wait in the middle of
a call lets a whole batch of other tasks run before the call goes on.

    python bench/scheduler_steps.py                  # 5,000 requests
    python bench/scheduler_steps.py --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()
        self.waits: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name.rsplit(".", 1)[-1]] += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("_handle"):  # hypercorn's task running one request's app
            self.waits[_where(task.coro)] += 1


def _where(coro: Any, depth: int = 6) -> str:
    """The innermost ``depth`` frames of a suspended coroutine's await chain."""
    frames: list[str] = []
    while coro is not None:
        frame: FrameType | None = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        inner = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if inner is None and "awaitable" in frame.f_locals:  # connect_proto's await_watching
            inner = frame.f_locals["awaitable"]
        coro = inner
    return " < ".join(reversed(frames[-depth:])) or "(finished)"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=5000)
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load missing: apt-get install -y nghttp2-client")
    from actions import cli

    counter = StepCounter()
    real_run = trio.run

    def instrumented_run(*a: Any, **kw: Any) -> Any:
        kw.setdefault("instruments", []).append(counter)
        return real_run(*a, **kw)

    trio.run = instrumented_run  # type: ignore[assignment]  # this process only
    port = sbs.free_port()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:

        def load() -> None:
            # The server runs on the main thread (signals); the load from this one.
            target = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            try:
                while True:
                    try:
                        asyncio.run(sbs.enqueue_benchrun(target))
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                body = Path(workdir) / "update.bin"
                sbs.update_body(body)
                counter.steps.clear()
                counter.waits.clear()
                ns = argparse.Namespace(requests=args.requests, conns=8, streams=8)
                result["rate"] = sbs.h2load(target, body, ns)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the server's signal receiver stops it

        threading.Thread(target=load, daemon=True).start()
        cli.main(["serve", "--port", str(port), "--data-dir", workdir])
    if "rate" not in result:
        sys.exit("the load did not run (see above)")
    rate = result["rate"]
    n = args.requests
    print(f"{n} Updates at {rate:.0f} req/s (with the instrument on)")
    print(f"task steps per request: {sum(counter.steps.values()) / n:.1f}")
    for name, count in counter.steps.most_common(6):
        print(f"  {count / n:5.2f}  {name}")
    print("where the request's task suspended, per request:")
    for where, count in counter.waits.most_common(8):
        print(f"  {count / n:5.2f}  {where}")


if __name__ == "__main__":
    main()
