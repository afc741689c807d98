"""Counters of the watch fan-out, kept as plain integers (an exporter reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class FanOutMetrics:
    events_received: int = 0  # events read from the store's change stream
    events_merged: int = 0  # events folded into one already waiting in a worker
    events_skipped: int = 0  # events for which no stream was subscribed
    updates_delivered: int = 0  # updates handed to subscribers' buffers
    updates_merged: int = 0  # updates folded into one already waiting in a subscriber
    subscriber_resyncs: int = 0  # streams ended with UNAVAILABLE so the client re-lists
    worker_errors: int = 0  # events a worker failed to turn into an update
    source_restarts: int = 0  # times the store's change stream had to be reopened

    def snapshot(self) -> dict[str, int]:
        return asdict(self)
