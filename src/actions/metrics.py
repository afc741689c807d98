"""The service's own metrics: fan-out counters, and their Prometheus exposition.

``FanOutMetrics`` stays a bag of plain integers that the fan-out bumps on its hot path
(an attribute increment, no locks, no label lookups). ``ServiceCollector`` turns them
into Prometheus series at scrape time, together with gauges read from the live fan-out
and store (subscribers, shard channel depth, readiness). The one series that needs a
distribution, the delivery lag, is a real ``Histogram`` the fan-out observes into.

Series::

    actions_watch_events_received_total           events read from the store's stream
    actions_watch_events_merged_total             merged into one already queued
    actions_watch_events_skipped_total            no stream was subscribed
    actions_watch_updates_delivered_total         updates handed to streams
    actions_watch_updates_merged_total            merged into one a stream had not read
    actions_watch_updates_unchanged_total         the same update as the last one: not sent
    actions_watch_worker_errors_total             events a worker failed on
    actions_watch_subscriber_resyncs_total        streams ended with UNAVAILABLE (behind)
    actions_watch_restarts_total                  store change stream reopened
    actions_kubernetes_relists_total              informer re-lists after 410 Gone
    actions_watch_subscribers                     open WatchForUpdates subscriptions
    actions_console_streams                       open console streams (WatchRun, WatchRuns)
    actions_watch_shard_depth{shard}              events queued in each worker's channel
    actions_watch_delivery_lag_seconds            histogram: store event read -> stream
    actions_ready{check}                          1 when the readiness check passes
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Delivery is normally sub-millisecond; seconds mean a slow reader or a stalled shard.
LAG_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


@dataclass(slots=True)
class FanOutMetrics:
    events_received: int = 0  # events read from the store's change stream
    events_merged: int = 0  # events folded into one already waiting in a worker
    events_skipped: int = 0  # events for which no stream was subscribed
    updates_delivered: int = 0  # updates handed to subscribers' buffers
    updates_merged: int = 0  # updates folded into one already waiting in a subscriber
    updates_unchanged: int = 0  # events whose update equals the one last offered
    subscriber_resyncs: int = 0  # streams ended with UNAVAILABLE so the client re-lists
    worker_errors: int = 0  # events a worker failed to turn into an update
    source_restarts: int = 0  # times the store's change stream had to be reopened
    # Seconds from the fan-out reading an event to a stream taking it for sending;
    # None: not measured (no clock read on the hot path).
    observe_lag: Callable[[float], None] | None = field(default=None, repr=False)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "observe_lag"}


class FanOutView(Protocol):
    """What the collector reads from the running fan-out."""

    def subscriber_count(self) -> int: ...

    def event_subscriber_count(self) -> int: ...

    def shard_depths(self) -> list[int]: ...


_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("events_received", "actions_watch_events_received", "Events read from the store."),
    ("events_merged", "actions_watch_events_merged", "Events merged into a queued one."),
    ("events_skipped", "actions_watch_events_skipped", "Events no stream subscribed to."),
    ("updates_delivered", "actions_watch_updates_delivered", "Updates handed to streams."),
    ("updates_merged", "actions_watch_updates_merged", "Updates merged into an unread one."),
    (
        "updates_unchanged",
        "actions_watch_updates_unchanged",
        "Events whose update equals the one last offered: not sent again.",
    ),
    ("worker_errors", "actions_watch_worker_errors", "Events a watch worker failed on."),
    (
        "subscriber_resyncs",
        "actions_watch_subscriber_resyncs",
        "Watch streams ended with UNAVAILABLE so that the client re-lists.",
    ),
    ("source_restarts", "actions_watch_restarts", "Times the store change stream reopened."),
)


class ServiceCollector(Collector):
    """Reads the fan-out and store state at scrape time (``registry.register``)."""

    def __init__(
        self,
        counters: FanOutMetrics,
        fanout: Callable[[], FanOutView | None],
        store: Callable[[], Any],
        readiness: Callable[[], Sequence[tuple[str, bool]]] = lambda: (),
    ) -> None:
        self._counters = counters
        self._fanout = fanout
        self._store = store
        self._readiness = readiness

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        for attr, name, doc in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(counters, attr))
        store = self._store()
        relists = getattr(store, "relists", 0) if store is not None else 0
        yield CounterMetricFamily(
            "actions_kubernetes_relists",
            "Informer re-lists after 410 Gone (Kubernetes store).",
            value=relists if isinstance(relists, int) else 0,
        )
        fanout = self._fanout()
        yield GaugeMetricFamily(
            "actions_watch_subscribers",
            "Open WatchForUpdates subscriptions.",
            value=fanout.subscriber_count() if fanout is not None else 0,
        )
        yield GaugeMetricFamily(
            "actions_console_streams",
            "Open console streams (WatchRun, WatchRuns).",
            value=fanout.event_subscriber_count() if fanout is not None else 0,
        )
        depth = GaugeMetricFamily(
            "actions_watch_shard_depth", "Events queued in each watch worker.", labels=["shard"]
        )
        if fanout is not None:
            for index, used in enumerate(fanout.shard_depths()):
                depth.add_metric([str(index)], used)
        yield depth
        ready = GaugeMetricFamily(
            "actions_ready", "1 when the readiness check passes.", labels=["check"]
        )
        for name, ok in self._readiness():
            ready.add_metric([name], 1.0 if ok else 0.0)
        yield ready


def lag_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "actions_watch_delivery_lag_seconds",
        "From the fan-out reading a store event to a watch stream taking the update.",
        buckets=LAG_BUCKETS,
        registry=registry,
    )


__all__ = ["LAG_BUCKETS", "FanOutMetrics", "ServiceCollector", "lag_histogram"]
