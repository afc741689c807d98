"""Prometheus series of the run-service notifier, read at scrape time.

Series::

    actions_run_service_events_observed_total       store events handed to observe()
    actions_run_service_reports_coalesced_total     folded into a report already waiting
    actions_run_service_reports_dropped_total       intermediate reports dropped (buffer full)
    actions_run_service_terminal_overflows_total    terminal reports left to a store re-list
    actions_run_service_records_total               RecordAction calls accepted
    actions_run_service_statuses_total              UpdateActionStatus calls accepted
    actions_run_service_rejected_total              calls refused (in-band or permanent code)
    actions_run_service_retries_total               calls retried after a transient failure
    actions_run_service_marked_total                objects marked terminal-status-recorded
    actions_run_service_mark_failures_total         objects that could not be marked
    actions_run_service_scans_total                 store listings (start-up, recovery)
    actions_run_service_invalid_objects_total       objects that cannot be reported
    actions_run_service_buffered                    reports waiting to be sent
    actions_run_service_reachable                   1 unless calls are failing right now
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actions.runservice.notifier import RunServiceNotifier

_COUNTERS: Final = (
    ("observed", "events_observed", "Store events handed to the run-service notifier."),
    ("coalesced", "reports_coalesced", "Reports folded into one already waiting."),
    ("dropped", "reports_dropped", "Intermediate reports dropped: the buffer was full."),
    ("overflowed", "terminal_overflows", "Terminal reports left to a re-list of the store."),
    ("records", "records", "RecordAction calls the run service accepted."),
    ("statuses", "statuses", "UpdateActionStatus calls the run service accepted."),
    ("rejected", "rejected", "Calls refused in-band or with a permanent error code."),
    ("retries", "retries", "Calls retried after a transient failure."),
    ("marked", "marked", "Objects marked after their terminal status was recorded."),
    ("mark_failures", "mark_failures", "Objects that could not be marked."),
    ("scans", "scans", "Listings of the store (start-up and recovery)."),
    ("invalid", "invalid_objects", "Objects that cannot be reported."),
)


class RunServiceCollector(Collector):
    """``registry.register(RunServiceCollector(lambda: notifier))``; the callable may
    return None (not configured, or not started yet): then nothing is exported."""

    def __init__(self, notifier: Callable[[], RunServiceNotifier | None]) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[Metric]:
        notifier = self._notifier()
        if notifier is None:
            return
        counts = notifier.metrics.snapshot()
        for attr, name, doc in _COUNTERS:
            yield CounterMetricFamily(f"actions_run_service_{name}", doc, value=counts[attr])
        yield GaugeMetricFamily(
            "actions_run_service_buffered",
            "Reports waiting to be sent to the run service.",
            value=notifier.buffered(),
        )
        yield GaugeMetricFamily(
            "actions_run_service_reachable",
            "1 unless calls to the run service are failing right now.",
            value=1.0 if notifier.reachable else 0.0,
        )
