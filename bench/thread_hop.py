"""CPU and wall time of one round trip from trio to a blocking thread and back.

``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)`` (how the embedded store reached
its SQLite connections before) against ``actions.store._thread.WorkerThread`` (its own
thread per connection), each with a call that does nothing, so only the hop is measured.

    python bench/thread_hop.py --calls 20000
"""

from __future__ import annotations

import argparse
import time

import trio

from actions.store._thread import WorkerThread


async def measure(calls: int, rounds: int) -> None:
    limiter = trio.CapacityLimiter(1)
    worker = WorkerThread("bench")

    async def pooled() -> None:
        await trio.to_thread.run_sync(int, limiter=limiter)

    async def dedicated() -> None:
        await worker.run(int)

    results: dict[str, list[tuple[float, float]]] = {"to_thread": [], "WorkerThread": []}
    try:
        for _ in range(rounds):  # interleaved, so both see the same machine
            for name, hop in (("to_thread", pooled), ("WorkerThread", dedicated)):
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    await hop()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                results[name].append((wall / calls * 1e6, cpu / calls * 1e6))
    finally:
        await worker.stop()
    print(f"{'':14s} {'wall µs/hop (best)':>20s} {'CPU µs/hop (best)':>19s}")
    for name, rows in results.items():
        print(f"{name:14s} {min(w for w, _ in rows):20.1f} {min(c for _, c in rows):19.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    trio.run(measure, args.calls, args.rounds)


if __name__ == "__main__":
    main()
