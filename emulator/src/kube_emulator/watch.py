"""One watch stream: where it starts, what it sends, when it ends.

The session is transport-free: it calls ``emit(event_dict)`` for every event and returns
when the stream should end cleanly, or raises :class:`AbortStream` when the transport must
drop the connection without the final chunk (a simulated network fault).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors, tables
from .errors import StatusError
from .faults import Faults
from .objects import meta, with_rv
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import Event, ObjectStore, parse_rv

Emit = Callable[[dict[str, Any]], None]

# How often a quiet stream wakes to notice a vanished client or a stopping server.
POLL_INTERVAL = 0.5


class AbortStream(Exception):
    """End the response without the terminating chunk."""


@dataclass
class WatchRequest:
    rtype: ResourceType
    version: str
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    resource_version: str | None
    allow_bookmarks: bool = False
    timeout_seconds: float | None = None
    send_initial_events: bool = False
    rv_match: str | None = None

    def check(self) -> None:
        """Errors that are answered as a plain HTTP error, before the stream starts."""
        if self.resource_version:
            parse_rv(self.resource_version)
        if self.rv_match and not self.send_initial_events:
            raise errors.invalid_list_options(
                errors.forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless "
                    "sendInitialEvents is provided",
                )
            )
        if self.send_initial_events and self.rv_match != "NotOlderThan":
            raise errors.invalid_list_options(
                errors.forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                )
            )


class WatchSession:
    def __init__(
        self,
        store: ObjectStore,
        request: WatchRequest,
        faults: Faults,
        *,
        bookmark_interval: float = 60.0,
        default_timeout: tuple[float, float] = (1800.0, 3600.0),
        client_gone: Callable[[], bool] = lambda: False,
        as_table: bool = False,
    ) -> None:
        self.as_table = as_table
        self.store = store
        self.req = request
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.client_gone = client_gone
        timeout = request.timeout_seconds
        if timeout is None:
            timeout = random.uniform(*default_timeout)
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        # Upstream sends a bookmark shortly before the server-side deadline.
        self.next_bookmark = self.started + bookmark_interval
        if timeout > 2:
            self.next_bookmark = min(self.next_bookmark, self.deadline - 2)
        self.sent = 0
        self.close_generation = faults.close_generation
        self.bookmark_generation = faults.bookmark_generation

    # --- presentation -----------------------------------------------------------------

    def _present(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.as_table:
            # kubectl get -w: every event carries a one-row Table.
            rv = {"resourceVersion": obj["metadata"]["resourceVersion"]}
            return tables.to_table(self.req.rtype, self.req.version, [obj], rv)
        api_version = self.req.rtype.api_version(self.req.version)
        if obj.get("apiVersion") == api_version:
            return obj
        return dict(obj, apiVersion=api_version)

    def _matches(self, obj: dict[str, Any]) -> bool:
        md = meta(obj)
        if (
            self.req.namespace is not None
            and self.req.rtype.namespaced
            and md.get("namespace") != self.req.namespace
        ):
            return False
        return self.req.labels.matches(md.get("labels")) and self.req.fields.matches(obj)

    def _translate(self, event: Event) -> dict[str, Any] | None:
        """Map a store event onto this watcher's filter."""
        if event.rkey != self.req.rtype.key:
            return None
        if event.type == "MODIFIED":
            now = self._matches(event.obj)
            before = event.prev is not None and self._matches(event.prev)
            if now and before:
                return {"type": "MODIFIED", "object": self._present(event.obj)}
            if now:
                return {"type": "ADDED", "object": self._present(event.obj)}
            if before and event.prev is not None:
                return {"type": "DELETED", "object": self._present(with_rv(event.prev, event.rv))}
            return None
        if self._matches(event.obj):
            return {"type": event.type, "object": self._present(event.obj)}
        return None

    def _bookmark(self, rv: int, *, initial_end: bool = False) -> dict[str, Any]:
        md: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            md["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": self.req.rtype.api_version(self.req.version),
                "kind": self.req.rtype.kind,
                "metadata": md,
            },
        }

    # --- the stream -------------------------------------------------------------------

    def _send(self, emit: Emit, event: dict[str, Any]) -> None:
        emit(event)
        if event["type"] == "BOOKMARK":
            return
        self.sent += 1
        limit = self.faults.watch_close_after
        if limit is not None and self.sent >= limit:
            if self.faults.watch_close_abrupt:
                raise AbortStream
            raise _EndStream

    def run(self, emit: Emit) -> None:
        try:
            self._run(emit)
        except _EndStream:
            return

    def _error(self, emit: Emit, err: StatusError) -> None:
        emit({"type": "ERROR", "object": err.to_status()})

    def _run(self, emit: Emit) -> None:
        req = self.req
        rv_text = req.resource_version
        if req.send_initial_events or not rv_text or rv_text == "0":
            with self.store.lock:
                cursor = self.store.rv
                initial = [
                    obj for obj in self.store.items(req.rtype, req.namespace) if self._matches(obj)
                ]
            for obj in initial:
                self._send(emit, {"type": "ADDED", "object": self._present(obj)})
            if req.send_initial_events:
                emit(self._bookmark(cursor, initial_end=True))
        else:
            cursor = parse_rv(rv_text)
            if cursor > self.store.rv and not self.store.wait_for_rv(
                cursor, self.store.too_large_rv_wait
            ):
                self._error(emit, errors.rv_too_large(cursor, self.store.rv))
                return
        while True:
            with self.store.changed:
                batch, expired = self._collect(cursor)
                if batch == [] and not self._should_stop():
                    wake = min(
                        self.deadline, self._bookmark_due(), time.monotonic() + POLL_INTERVAL
                    )
                    wait = wake - time.monotonic()
                    if wait > 0:
                        self.store.changed.wait(wait)
                        batch, expired = self._collect(cursor)
            if expired is not None:
                self._error(emit, expired)
                return
            for event in batch or ():
                cursor = event.rv
                translated = self._translate(event)
                if translated is not None:
                    self._send(emit, translated)
            if self._should_stop():
                if self.store.closed or self.faults.close_abrupt:
                    raise AbortStream
                return
            now = time.monotonic()
            if now >= self.deadline:
                return
            if self.client_gone():
                raise AbortStream
            if req.allow_bookmarks and (
                now >= self.next_bookmark
                or self.faults.bookmark_generation != self.bookmark_generation
            ):
                self.bookmark_generation = self.faults.bookmark_generation
                self.next_bookmark = now + self.bookmark_interval
                emit(self._bookmark(cursor))

    def _collect(self, cursor: int) -> tuple[list[Event] | None, StatusError | None]:
        try:
            return self.store.events_after(cursor), None
        except StatusError as exc:
            return None, exc

    def _bookmark_due(self) -> float:
        if not self.req.allow_bookmarks:
            return self.deadline
        if self.faults.bookmark_generation != self.bookmark_generation:
            return time.monotonic()
        return self.next_bookmark

    def _should_stop(self) -> bool:
        return (
            self.store.closed
            or self.faults.close_generation != self.close_generation
            or self._resource_removed()
        )

    def _resource_removed(self) -> bool:
        """The kind's CRD was deleted: the real server tears down the kind's storage, which
        ends its watches cleanly, after the events of the CRD finalizer deleting every
        object. (Later requests for the kind get a plain ``404 page not found``.)"""
        rtype = self.req.rtype
        return not rtype.builtin and self.store.registry.get(*rtype.key) is None


class _EndStream(Exception):
    pass
