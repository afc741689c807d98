"""A short soak (bench/soak.py): mixed load against a real ``actions-service`` process
with clients that disconnect, stall (window 0), reset and reconnect; afterwards calls in
flight, open streams, watch subscriptions, trio tasks and file descriptors are back at
their baseline, and RSS within the bench's slack. The long run is
``python bench/soak.py --seconds 60``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402


def test_short_soak_gives_everything_back(tmp_path: Path) -> None:
    result = soak.soak(seconds=6, write_timeout=1.0, rss_slack=64.0, log=tmp_path / "server.log")
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert result["alive"], log[-3000:]
    assert result["leaks"] == {}, (result, log[-3000:])
    assert not result["rss_over_slack"], result
    clients = result["clients"]
    assert isinstance(clients, dict)
    # The load did happen: every kind of client made calls.
    for kind in ("good calls", "abusive calls", "watches"):
        assert clients.get(kind, 0) > 0, result
    assert "Traceback" not in log
