"""The server process collects garbage less often, with start-up objects left out."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_tunes_the_collector_before_it_serves() -> None:
    # In a process of its own: the test process's collector is not ours to change.
    code = (
        "import gc\n"
        "from actions.cli import GC_THRESHOLDS, tune_garbage_collector\n"
        "assert gc.get_threshold() != GC_THRESHOLDS\n"
        "tune_garbage_collector()\n"
        "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.collect() >= 0\n"  # still collects when asked
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
