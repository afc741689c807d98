"""The Kubernetes backend's informer: ONE list+watch of the namespace, in one thread.

The thread lists, then watches from the list's resourceVersion with bookmarks on. A watch
that ends (server timeout) or drops (network) is resumed from the last resourceVersion
seen, after a jittered exponential backoff when it failed. On 410 Gone it re-lists and
emits the differences against its cache (new objects ADDED, changed ones MODIFIED,
vanished ones DELETED carrying the list's resourceVersion), so consumers converge without
restarting.

Every event updates the cache (read by ``latest()``) and is appended to a bounded history
(for ``run_events(since=...)``) under one lock; then it is handed to each registered sink
with ``trio.from_thread.run``, which blocks this thread until the sink's channel accepts
it: consumer backpressure reaches the watch, nothing is dropped.

A 404 on the list or watch means the resource itself is not served: its
CustomResourceDefinition was deleted (or never installed). The informer then says so
(``resource_missing``, ``last_error``; logged once, then summed up now and then), ends
the sinks' streams with StoreUnavailable (their consumers must start over: what they
hold may be gone), and keeps retrying with backoff; once the resource is served again
it re-lists, reporting the differences as after a 410. Any other failure (the API server
out of reach) is logged the same way: once when it starts, summed up now and then, and
once when the server answers a list again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import trio
from kubernetes import client, watch

from actions.log_policy import Outage
from actions.store import _meta
from actions.store._kube_client import Backoff, ClientSettings, TokenBucket, call, translate
from actions.store._meta import copy_json
from actions.store._roots import RootOrder, is_root, take_page
from actions.store.base import KubeObject, RootCursor, WatchEvent
from actions.store.errors import Gone, NotFound, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

_LIST_PAGE = 500
# Between retries while the resource is not served: a 404 is cheap to ask for, and the
# CustomResourceDefinition should be picked up soon after it is re-created.
_MISSING_RETRY_MAX = 5.0


def _rv(obj: KubeObject) -> int:
    return int(obj["metadata"]["resourceVersion"])


class Sink:
    """One ``run_events`` consumer, as seen from the informer thread."""

    def __init__(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        since: int,
        lost: trio.Event | None = None,
    ) -> None:
        self.send = send
        self.since = since  # events at or below it were already seen by the consumer
        self.ready = trio.Event()  # set once the replayed backlog has been sent
        self.closed = False
        # Set (with ``lost_reason``) when the informer cannot go on feeding this sink.
        self.lost = lost if lost is not None else trio.Event()
        self.lost_reason = ""
        self._scopes: set[trio.CancelScope] = set()

    async def deliver(self, event: WatchEvent) -> None:
        """Runs in trio (called through ``trio.from_thread.run``)."""
        if self.closed:
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await self.ready.wait()  # live events queue up behind the backlog
                if not self.closed:
                    await self.send.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
            finally:
                self._scopes.discard(scope)

    def lose(self, reason: str) -> None:
        """Runs in trio: the stream behind this sink is broken; its consumer must end."""
        self.lost_reason = self.lost_reason or reason
        self.lost.set()

    def close(self) -> None:
        """Trio side: stop accepting, and free the thread if it is blocked on us."""
        self.closed = True
        for scope in list(self._scopes):
            scope.cancel()


class Informer:
    def __init__(
        self,
        api: client.CustomObjectsApi,
        namespace: str,
        settings: ClientSettings,
        bucket: TokenBucket,
        trio_token: trio.lowlevel.TrioToken,
        *,
        history: int,
        prepare: Callable[[], None] | None = None,
        plural: str = _meta.PLURAL,
    ) -> None:
        self._api = api
        self._plural = plural
        self._namespace = namespace
        self._settings = settings
        self._bucket = bucket
        self._token = trio_token
        self._history_size = history
        self._lock = threading.Lock()
        self._cache: dict[str, KubeObject] = {}
        self._roots = RootOrder()  # the roots in _cache, in creation order
        # Objects the API server showed this process (lists, reads, write responses) in a
        # newer state than the cache holds yet. A watch consumer may have been shown them
        # too (a WatchForUpdates snapshot is a server list), so a re-list must report
        # their disappearance (and with the freshest state known) even though the watch
        # never delivered them. An entry goes once the watch or a list catches up.
        self._known: dict[str, KubeObject] = {}
        self._history: deque[WatchEvent] = deque()
        self._floor: int | None = None  # every change after it is in _history
        self._sinks: set[Sink] = set()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._listed = threading.Event()
        self._position: str | None = None  # resourceVersion to watch from; None: re-list
        # The resourceVersion of the newest state handed out (last event, or list).
        self._applied_rv = 0
        # Run (and retried) in the thread before the first list: the start-up checks of
        # a store that opened without waiting for the API server.
        self._prepare = prepare
        self._progressed = False  # the current watch request has delivered something
        self.synced = False
        self.api_reachable = False
        self.last_error: str | None = None
        self.relists = 0
        self.resource = f"{plural}.{_meta.GROUP}"
        self.server = str(getattr(api.api_client.configuration, "host", "") or "?")
        # The API server answers 404 for the resource: its CRD is not installed.
        self.resource_missing = False
        self._missing = Outage(log)
        # Any other failure of the list or watch (the API server unreachable, say): one
        # line when it starts, a count now and then, one when the server answers again.
        self._failing = Outage(log, level=logging.WARNING)
        self._thread = threading.Thread(
            target=self._run, name=f"{plural}-informer-{namespace}", daemon=True
        )

    # -- trio side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_listed(self, timeout: float) -> bool:
        """Blocking: call from a worker thread."""
        return self._listed.wait(timeout)

    def get(self, name: str) -> KubeObject | None:
        with self._lock:
            obj = self._cache.get(name)
        return None if obj is None else copy_json(obj)

    def roots_page(
        self, labels: dict[str, str], limit: int, before: RootCursor | None
    ) -> tuple[list[KubeObject], RootCursor | None]:
        """``Store.list_roots`` from the cache."""
        with self._lock:
            cache = self._cache

            def matches(name: str) -> bool:
                obj_labels = cache[name]["metadata"].get("labels") or {}
                return all(obj_labels.get(k) == v for k, v in labels.items())

            names, cursor = take_page(self._roots, before, limit, matches)
            return [copy_json(cache[name]) for name in names], cursor

    def note(self, objects: list[KubeObject], as_of: int | None = None) -> None:
        """Remember objects the API server returned (``as_of``: a list's resourceVersion;
        else each object's own) if they are ahead of what the watch has handed out."""
        with self._lock:
            for obj in objects:
                rv = _rv(obj)
                if (rv if as_of is None else as_of) <= self._applied_rv:
                    continue  # the watch has been there already
                name = obj["metadata"]["name"]
                cached, known = self._cache.get(name), self._known.get(name)
                if (cached is None or _rv(cached) < rv) and (known is None or _rv(known) < rv):
                    self._known[name] = copy_json(obj)

    def register(self, sink: Sink, since: int | None) -> list[WatchEvent]:
        """Add a sink; returns the backlog of events after ``since`` it must get first.

        ``since=None``: live events only, those above ``sink.since`` (the API server's
        resourceVersion "now"), or, when ``sink.since`` is 0 (now unknown), above what the
        informer has handed out so far. Before the first list that is nothing: the first
        list then hands the sink every listed object above ``sink.since`` as ADDED, so
        that no write made after this call (and before that list) is missed."""
        with self._lock:
            if since is None:
                backlog: list[WatchEvent] = []
                if not sink.since and self._listed.is_set():
                    sink.since = self._applied_rv
            else:
                if self._floor is None or since < self._floor:
                    raise Gone(f"too old resource version: {since} ({self._floor})")
                backlog = [e for e in self._history if _rv(e.object) > since]
            self._sinks.add(sink)
        return backlog

    def unregister(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.discard(sink)
        sink.close()

    def request_stop(self) -> None:
        """Ask the thread to end; repeat until it has (a stop racing the start of a
        watch request is otherwise only noticed when that request ends)."""
        self._stop.set()
        with self._lock:
            current, sinks = self._watch, list(self._sinks)
        for sink in sinks:
            sink.close()
        if current is not None:
            current.stop()  # shuts the socket down: the blocked read returns at once

    def join(self, timeout: float) -> bool:
        """Blocking: call from a worker thread. True once the thread has ended."""
        if self._thread.ident is None:
            return True  # never started
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                if self._prepare is not None:
                    self._prepare()
                    self._prepare = None
                if self._position is None:
                    self._position = self._relist()
                    backoff.reset()
                    self._answered()
                elif not self.api_reachable:
                    self._probe()  # resume from the last rv, but say "reachable" at once
                    self._answered()
                self._follow()
                self.api_reachable = True  # the request ended cleanly (server timeout)
                backoff.reset()
            except trio.RunFinishedError:
                return  # the trio run that owns us is gone
            except Exception as exc:
                if self._stop.is_set():
                    return
                # call() already translated; Watch.stream raises client errors directly.
                error = exc if isinstance(exc, StoreError) else translate(exc)
                if isinstance(error, NotFound):
                    self._resource_gone(error)
                    self._stop.wait(min(backoff.next_delay(), _MISSING_RETRY_MAX))
                    continue
                if isinstance(error, Gone):
                    log.info("%s expired; re-listing", self._watch_label())
                    self.synced = False
                    self._position = None
                    continue
                if isinstance(error, StoreUnavailable) and self._progressed:
                    # The stream was up and delivering when the connection dropped (a
                    # proxy cut it, say): not a sign the server is gone. Resume at once;
                    # if that fails too, the server is reported unreachable.
                    self._progressed = False
                    log.info("%s dropped (%s); resuming", self._watch_label(), error)
                    continue
                self.last_error = str(error or exc)
                if isinstance(error, StoreUnavailable):
                    self.api_reachable = False
                self._failing.failed(f"{self._watch_label()} failed: {self.last_error}")
                self._stop.wait(backoff.next_delay())

    def _watch_label(self) -> str:
        return f"watch of {self.resource} in namespace {self._namespace} on {self.server}"

    def _answered(self) -> None:
        """The API server answered a list: an outage of it (if any) is over."""
        self._failing.recovered(f"{self._watch_label()} works again")

    def _resource_gone(self, error: StoreError) -> None:
        """The list or watch answered 404: the resource is not served (any more)."""
        self.synced = False
        self._position = None  # served again: its objects may be new ones, re-list
        self.api_reachable = True  # the server answered
        self.last_error = (
            f"CustomResourceDefinition {self.resource} not found on the API server "
            f"{self.server} (list/watch answered 404: {str(error).strip()}); retrying until it is "
            "installed again"
        )
        self._missing.failed(self.last_error)
        if self.resource_missing:
            return
        self.resource_missing = True
        with self._lock:
            sinks = list(self._sinks)
        reason = f"{self.resource} is no longer served by the API server {self.server}"
        for sink in sinks:
            try:
                trio.from_thread.run_sync(sink.lose, reason, trio_token=self._token)
            except trio.RunFinishedError:
                return  # the trio run that owns us is gone (we are in _run's handler)

    def _throttle(self) -> None:
        delay = self._bucket.reserve()
        if delay:
            self._stop.wait(delay)

    def _list(self, **kwargs: Any) -> KubeObject:
        """One list request for the namespace's taskactions, after the rate limiter."""
        self._throttle()
        return cast(
            KubeObject,
            call(
                self._api.list_namespaced_custom_object,
                _meta.GROUP,
                _meta.VERSION,
                self._namespace,
                self._plural,
                _request_timeout=self._settings.timeouts,
                **kwargs,
            ),
        )

    def _probe(self) -> None:
        self._list(limit=1)
        self.api_reachable = True
        self.last_error = None

    def _relist(self) -> str:
        items: dict[str, KubeObject] = {}
        token: str | None = None
        while True:  # pages of one snapshot: same list resourceVersion throughout
            kwargs: dict[str, Any] = {"limit": _LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            page = self._list(**kwargs)
            for item in page.get("items") or []:
                items[item["metadata"]["name"]] = item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        list_rv: str = page["metadata"]["resourceVersion"]
        with self._lock:
            old = self._cache
            self._cache = items
            self._roots.clear()
            for name, item in items.items():
                self._track_root(name, item)
            first = not self._listed.is_set()
            # What a consumer may know besides the old cache: objects shown by the API
            # server up to this list (newer ones stay, still ahead of the cache).
            shown = {n: o for n, o in self._known.items() if _rv(o) <= int(list_rv)}
            self._known = {n: o for n, o in self._known.items() if n not in shown}
            # The first list is news only to sinks that registered before it (started
            # while the API server was out of reach): they get every object as ADDED.
            changes = _differences(old, items, list_rv, shown) if self._sinks or not first else []
            self._applied_rv = int(list_rv)
            # The changes between the old watch position and this list are lost: resuming
            # from before the list is no longer possible.
            self._history.clear()
            self._floor = int(list_rv)
            sinks = list(self._sinks)
            self._listed.set()  # under the lock: register() decides on it
        self.relists += 0 if first else 1
        self.api_reachable = True
        self.last_error = None
        self.synced = True
        if self.resource_missing:
            self.resource_missing = False
            self._missing.recovered(
                f"CustomResourceDefinition {self.resource} is served again by {self.server}; "
                f"re-listed {len(items)} objects"
            )
        for event in changes:
            self._hand_out(event, sinks)
        return list_rv

    def _follow(self) -> None:
        """One watch request from ``_position``, advancing it with every event and bookmark
        (kept on self, so a request that fails midway resumes after the last event)."""
        assert self._position is not None
        w = watch.Watch()
        with self._lock:
            if self._stop.is_set():
                return
            self._watch = w
        self._throttle()
        stream = w.stream(
            self._api.list_namespaced_custom_object,
            _meta.GROUP,
            _meta.VERSION,
            self._namespace,
            self._plural,
            resource_version=self._position,
            allow_watch_bookmarks=True,
            # With a timeout the client never retries by itself (and raises 410 at once),
            # so this loop owns every reconnect decision.
            timeout_seconds=self._settings.watch_timeout,
            _request_timeout=self._settings.watch_read_timeout,
        )
        self._progressed = False
        for raw in stream:
            self.api_reachable = True
            self._progressed = True
            if raw is None:  # a line that was not JSON
                continue
            event_type = raw.get("type")
            obj = raw.get("raw_object")
            if not isinstance(obj, dict):
                continue
            if event_type in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(WatchEvent(event_type, obj))
            elif event_type != "BOOKMARK":
                continue
            self._position = obj["metadata"]["resourceVersion"]
            if self._stop.is_set():
                break

    def _apply(self, event: WatchEvent) -> None:
        with self._lock:
            known = self._known.get(event.name)
            if known is not None and _rv(event.object) >= _rv(known):
                del self._known[event.name]
            if event.type == "DELETED":
                self._cache.pop(event.name, None)
                self._roots.discard(event.name)
            else:
                # Its own copy: consumers may mutate the event's object.
                self._cache[event.name] = copy_json(event.object)
                self._track_root(event.name, event.object)
            self._history.append(event)
            self._applied_rv = max(self._applied_rv, _rv(event.object))
            while len(self._history) > self._history_size:
                self._floor = _rv(self._history.popleft().object)
            sinks = list(self._sinks)
        self._hand_out(event, sinks)

    def _track_root(self, name: str, obj: KubeObject) -> None:
        meta = obj["metadata"]
        if is_root(meta.get("labels") or {}):
            self._roots.add(name, meta.get("creationTimestamp") or "")
        else:
            self._roots.discard(name)

    def _hand_out(self, event: WatchEvent, sinks: list[Sink]) -> None:
        rv = _rv(event.object)
        for sink in sinks:
            if not sink.closed and rv > sink.since:
                trio.from_thread.run(sink.deliver, event, trio_token=self._token)


def _differences(
    old: dict[str, KubeObject],
    new: dict[str, KubeObject],
    list_rv: str,
    shown: dict[str, KubeObject] | None = None,
) -> list[WatchEvent]:
    """What a consumer of the lost watch events needs to reach the listed state.

    Vanished objects are those of the old cache, and those the API server showed
    (``shown``) that the watch never delivered, missing from the list; each is reported
    DELETED in the freshest state known (its final state may have been newer still:
    Kubernetes' "DeletedFinalStateUnknown")."""
    shown = shown or {}
    changes = [
        WatchEvent("MODIFIED" if name in old else "ADDED", obj)
        for name, obj in new.items()
        if name not in old
        or old[name]["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
    ]
    changes.sort(key=lambda e: _rv(e.object))
    for name in sorted((old.keys() | shown.keys()) - new.keys()):
        candidates = [o for o in (old.get(name), shown.get(name)) if o is not None]
        gone = copy_json(max(candidates, key=_rv))
        gone["metadata"]["resourceVersion"] = list_rv  # deleted at or before the list
        changes.append(WatchEvent("DELETED", gone))
    return changes
