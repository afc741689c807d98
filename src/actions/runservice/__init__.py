"""Reporting actions to Flyte's run service (``flyteidl2.workflow.InternalRunService``).

Wiring, in the composition root::

    notifier = notifier_for(config.run_service_url, store)   # None: not configured
    # the fan-out calls notifier.observe(event) for every store event it reads, and
    # notifier.resync() when it had to reopen the store's change stream
    await nursery.start(fanout.run)
    nursery.start_soon(notifier.run)                         # after the fan-out follows
    registry.register(RunServiceCollector(lambda: notifier))
"""

from __future__ import annotations

from actions.runservice.client import (
    ConnectRunServiceClient,
    RunServiceClient,
    check_url,
    url_problem,
)
from actions.runservice.messages import TERMINAL_RECORDED
from actions.runservice.metrics import RunServiceCollector
from actions.runservice.notifier import RunServiceMetrics, RunServiceNotifier, RunServiceStore


def notifier_for(
    url: str | None, store: RunServiceStore, **options: object
) -> RunServiceNotifier | None:
    """A notifier for the run service at ``url`` (``actions.runServiceUrl``), or None
    when ``url`` is empty or None. ``options`` go to ``RunServiceNotifier``. Raises
    ValueError for a URL that is not http(s)://host[:port][/path]."""
    if not url:
        return None
    client = ConnectRunServiceClient(url)
    return RunServiceNotifier(client, store, **options)  # type: ignore[arg-type]


__all__ = [
    "TERMINAL_RECORDED",
    "ConnectRunServiceClient",
    "RunServiceClient",
    "RunServiceCollector",
    "RunServiceMetrics",
    "RunServiceNotifier",
    "RunServiceStore",
    "check_url",
    "notifier_for",
    "url_problem",
]
