"""Cost of ``RunServiceNotifier.observe`` on the fan-out's hot path (prints figures).

    .venv/bin/python bench/run_service_observe.py [events]

Three cases, 1000 distinct actions cycled: events coalescing into a roomy buffer; a full
buffer dropping intermediate statuses; a full buffer where terminal statuses evict
intermediate ones (and then overflow). Nothing is sent: ``run`` is not started.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests" / "support", ROOT / "tests" / "support" / "gen", ROOT / "src"):
    sys.path.insert(0, str(_path))

from actions_harness import aid, task_req  # noqa: E402

from actions import objects, phases  # noqa: E402
from actions.runservice import ConnectRunServiceClient, RunServiceNotifier  # noqa: E402
from actions.store.base import WatchEvent  # noqa: E402

ACTIONS = 1000


class _NoStore:
    async def list(self, labels: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
        return [], "0"

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        return {}


def _events(phase: int) -> list[WatchEvent]:
    out = []
    for i in range(ACTIONS):
        obj = objects.new_object(task_req(aid(f"a{i}")), "flyte", None)
        obj["metadata"].update(resourceVersion=str(i + 1), uid=f"u{i}")
        obj["status"] = {"conditions": phases.conditions_for(phase, "2026-01-01T00:00:00Z")}
        out.append(WatchEvent("MODIFIED", obj))
    return out


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    logging.disable(logging.WARNING)  # the buffer-full warnings are throttled anyway
    live, final = _events(phases.RUNNING), _events(phases.SUCCEEDED)
    cases = [
        ("coalescing, buffer 10000", live, 10_000, []),
        ("buffer full, intermediate dropped", live, 100, []),
        ("buffer full, terminal evicts/overflows", final, 100, live[:100]),
    ]
    for label, events, capacity, prefill in cases:
        client = ConnectRunServiceClient("http://127.0.0.1:9")
        notifier = RunServiceNotifier(client, _NoStore(), buffer_size=capacity)
        for event in prefill:
            notifier.observe(event)
        start = time.perf_counter()
        for k in range(count):
            notifier.observe(events[k % ACTIONS])
        elapsed = time.perf_counter() - start
        m = notifier.metrics
        print(f"{label:40s} {elapsed / count * 1e6:6.2f} us/observe  buffered={notifier.buffered()}"
              f" dropped={m.dropped} overflowed={m.overflowed}")  # fmt: skip


if __name__ == "__main__":
    main()
