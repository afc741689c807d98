"""The server process collects garbage less often, with start-up objects left out."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_tunes_the_collector_before_it_serves() -> None:
    # In a process of its own: the test process's collector is not ours to change.
    # run_server with trio.run replaced by a probe: what the collector looks like at
    # the moment the server would start serving.
    code = (
        "import gc, trio\n"
        "from actions import cli, config\n"
        "assert gc.get_threshold() != cli.GC_THRESHOLDS\n"
        "seen = []\n"
        "trio.run = lambda *a, **k: seen.append((gc.get_threshold(), gc.get_freeze_count()))\n"
        "assert cli.run_server(config.Config()) == 0\n"
        "(thresholds, frozen), = seen\n"
        "assert thresholds == cli.GC_THRESHOLDS, thresholds\n"
        "assert frozen > 1000, frozen\n"
        "assert gc.collect() >= 0\n"  # still collects when asked
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
