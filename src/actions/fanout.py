"""The watch fan-out: one store change stream, N ordered workers, many bounded subscribers.

::

    store.run_events ──> dispatcher ──FNV-1a(name) mod N──> worker i ──> subscribers of
                                                                       (org, project,
                                                                        domain, run, parent)

- One action's events always go to the same worker, which handles them one at a time, so
  its updates reach every stream in store order.
- An event for an object that already waits in its worker replaces that entry (the
  newer state supersedes the older one), and the worker delivers the object its event
  carries: nothing is read back from the store. A full worker channel blocks the
  dispatcher and so the store stream: backpressure, nothing dropped.
- Delivery to a stream never blocks a worker. Each subscription buffers at most
  ``subscriber_buffer`` actions (a newer update for an action already buffered replaces
  it); a stream that falls further behind is ended with UNAVAILABLE ("resync") and counted,
  and its client reconnects for a fresh snapshot.
- An idle subscription is one small object: no task, no channel; its buffer and wake-up
  event are created when first needed.
- A change stream that fails is reopened after a pause that doubles while it keeps
  failing (``restart_delay`` up to ``max_restart_delay``). This loop is the only one
  that waits (the store re-raises at once), so a store that works again is followed
  again within ``max_restart_delay``. The first failure is one log line naming the
  cause (DEBUG when the store has logged that cause itself), repeats are counted, and
  the reopening says how many there were.
- The console's streams subscribe the same way to a whole run (``RunKey``: every action
  whose spec names the run) or to every run's root (``ROOTS``); they are handed the
  store event itself (``subscribe_events``) and turn it into their own message when
  they send it. With none open, an event costs them one empty-dict check.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import trio
from flyteidl2.actions.actions_service_pb2 import WatchForUpdatesResponse

from actions import objects
from actions.log_policy import Outage, exception_summary
from actions.metrics import FanOutMetrics
from actions.naming import fnv1a_32
from actions.store.base import KubeObject, WatchEvent
from connect_proto import Code, RpcError

log = logging.getLogger(__name__)

# A change stream that followed changes this long before it failed was working: the
# next reopen starts over from the shortest pause.
HEALTHY_STREAM_SECONDS = 10.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunKey:
    """A stream scoped to every action of one run, the root included."""

    org: str
    project: str
    domain: str
    run: str


class _Roots(enum.Enum):
    ROOTS = "roots"


# A stream scoped to the root action of every run.
ROOTS: Final = _Roots.ROOTS
EventKey = RunKey | _Roots


def run_key_of(obj: KubeObject) -> RunKey:
    """The run an object belongs to, from its spec (labels may be hashed)."""
    spec = obj.get("spec") or {}
    return RunKey(
        objects.org_of(obj),
        spec.get("project", ""),
        spec.get("domain", ""),
        spec.get("runName", ""),
    )


class EventSource(Protocol):
    """The part of ``Store`` the fan-out uses."""

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...


class Offered(enum.Enum):
    """What ``Subscription.offer`` did with an update."""

    ADDED = "added"  # a new entry in the stream's buffer
    MERGED = "merged"  # replaced the pending update of the same action
    FULL = "full"  # no room: the stream must be resynced


class Subscription(Generic[T]):
    """One stream's place in the fan-out: a WatchForUpdates stream buffers the updates
    it sends (``T`` is WatchForUpdatesResponse), a console stream the store events."""

    __slots__ = ("_error", "_observe_lag", "_pending", "_wakeup", "capacity", "key", "min_rv")

    def __init__(
        self,
        key: objects.WatchKey | EventKey,
        capacity: int,
        observe_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.key = key
        self.capacity = capacity
        # Updates at or below this resourceVersion are already in the stream's snapshot.
        self.min_rv = 0
        # action -> (resourceVersion, update, when the fan-out read its event)
        self._pending: OrderedDict[str, tuple[int, T, float]] | None = None
        self._observe_lag = observe_lag
        self._wakeup: trio.Event | None = None
        self._error: RpcError | None = None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def buffered(self) -> int:
        return len(self._pending) if self._pending else 0

    def offer(self, action: str, rv: int, response: T, read_at: float = 0.0) -> Offered:
        """Buffer an update without blocking."""
        if self._error is not None:
            return Offered.MERGED  # the stream ends at its next read; nothing to keep
        pending = self._pending
        if pending is None:
            pending = self._pending = OrderedDict()
        merged = action in pending
        if not merged and len(pending) >= self.capacity:
            return Offered.FULL
        if merged:
            # The lag of a merged update runs from the older event: that is how long
            # the reader has been without this action's news.
            read_at = pending[action][2]
        pending[action] = (rv, response, read_at)
        if self._wakeup is not None:
            self._wakeup.set()
        return Offered.MERGED if merged else Offered.ADDED

    def fail(self, error: RpcError) -> None:
        """End the stream with ``error`` at its next read; frees the buffer at once."""
        if self._error is None:
            self._error = error
        self._pending = None
        if self._wakeup is not None:
            self._wakeup.set()

    async def next_batch(self) -> list[T]:
        """Wait for buffered updates newer than the snapshot and take them all, in the
        order their actions first became pending. Raises the stream's error, if any."""
        while True:
            if self._error is not None:
                raise self._error
            pending = self._pending
            if pending:
                self._pending = None
                min_rv = self.min_rv
                batch = [resp for rv, resp, _ in pending.values() if rv > min_rv]
                observe = self._observe_lag
                if observe is not None:
                    now = time.monotonic()
                    for rv, _, read_at in pending.values():
                        if rv > min_rv and read_at:
                            observe(now - read_at)
                if batch:
                    return batch
                continue
            self._wakeup = trio.Event()
            try:
                await self._wakeup.wait()
            finally:
                self._wakeup = None


class _Worker:
    __slots__ = ("last_sent", "pending", "receive", "send")

    def __init__(self, capacity: int) -> None:
        self.send, self.receive = trio.open_memory_channel[str](capacity)
        # name -> (the newest event not yet handled, when the first of the events merged
        # into it was read); a name is here iff it is in the channel
        self.pending: dict[str, tuple[WatchEvent, float]] = {}
        # name -> the update last offered to its subscribers. A change a watcher cannot
        # see (an annotation, an executor's plugin state) gives the same update again,
        # and is not sent twice. Dropped whenever an event for the name is skipped or the
        # object is deleted, so it only ever equals what every current subscriber holds
        # (a new subscriber's snapshot is read after the update was offered).
        self.last_sent: dict[str, WatchForUpdatesResponse] = {}


class FanOut:
    """Feeds WatchForUpdates streams from a store's single change stream."""

    def __init__(
        self,
        source: EventSource,
        *,
        namespace: str = "flyte",
        workers: int = 10,
        buffer_size: int = 100,
        subscriber_buffer: int = 1000,
        restart_delay: float = 0.1,
        max_restart_delay: float = 5.0,
        metrics: FanOutMetrics | None = None,
        observers: Sequence[Callable[[WatchEvent], None]] = (),
        resyncs: Sequence[Callable[[], None]] = (),
    ) -> None:
        """``observers`` see every store event (synchronous, never raising); ``resyncs``
        are called after a gap in the change stream."""
        if workers < 1 or buffer_size < 1 or subscriber_buffer < 1:
            raise ValueError("workers, buffer_size and subscriber_buffer must be at least 1")
        self._source = source
        self.namespace = namespace
        self._buffer_size = buffer_size
        self._subscriber_buffer = subscriber_buffer
        self._restart_delay = restart_delay
        self._max_restart_delay = max(restart_delay, max_restart_delay)
        self._stream_outage = Outage(log, clock=trio.current_time)
        self._workers = [_Worker(buffer_size) for _ in range(workers)]
        self._subscribers: dict[
            objects.WatchKey, dict[Subscription[WatchForUpdatesResponse], None]
        ] = {}
        # The console's streams, fed with store events (a separate registry, so that the
        # WatchForUpdates path is unchanged).
        self._event_subscribers: dict[EventKey, dict[Subscription[WatchEvent], None]] = {}
        self._running = False
        self._closing = False
        self.metrics = metrics or FanOutMetrics()
        self._observers = tuple(observers)
        self._resyncs = tuple(resyncs)

    # -- subscriptions ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running and not self._closing

    def subscriber_count(self) -> int:
        """Open WatchForUpdates subscriptions."""
        return sum(len(subs) for subs in self._subscribers.values())

    def event_subscriber_count(self) -> int:
        """Open console subscriptions (``subscribe_events``)."""
        return sum(len(subs) for subs in self._event_subscribers.values())

    def shard_depths(self) -> list[int]:
        """Names queued in each worker's channel now (a gauge per shard)."""
        return [w.send.statistics().current_buffer_used for w in self._workers]

    def registry_size(self) -> int:
        """Number of keys in the registry; 0 when no stream is open."""
        return len(self._subscribers) + len(self._event_subscribers)

    @contextmanager
    def subscribe(self, key: objects.WatchKey) -> Iterator[Subscription[WatchForUpdatesResponse]]:
        """Register a stream for ``key`` for the duration of the ``with`` block; it is
        removed on every exit path."""
        if not self.running:
            raise RpcError(Code.UNAVAILABLE, "watch fan-out is not running; retry")
        sub = Subscription[WatchForUpdatesResponse](
            key, self._subscriber_buffer, self.metrics.observe_lag
        )
        self._subscribers.setdefault(key, {})[sub] = None
        try:
            yield sub
        finally:
            self._remove(sub)

    @contextmanager
    def subscribe_events(self, key: EventKey) -> Iterator[Subscription[WatchEvent]]:
        """Like ``subscribe``, for a whole run (``RunKey``) or every root (``ROOTS``):
        the stream is handed each store event of its scope, buffered by object name
        (the newest event of an object replaces an older one still buffered)."""
        if not self.running:
            raise RpcError(Code.UNAVAILABLE, "watch fan-out is not running; retry")
        sub = Subscription[WatchEvent](key, self._subscriber_buffer, self.metrics.observe_lag)
        self._event_subscribers.setdefault(key, {})[sub] = None
        try:
            yield sub
        finally:
            self._remove(sub)

    def _remove(
        self, sub: Subscription[WatchForUpdatesResponse] | Subscription[WatchEvent]
    ) -> None:
        registry: dict[Any, dict[Any, None]] = (
            self._subscribers if isinstance(sub.key, objects.WatchKey) else self._event_subscribers
        )
        subs = registry.get(sub.key)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del registry[sub.key]

    def _all_subscriptions(
        self,
    ) -> list[Subscription[WatchForUpdatesResponse] | Subscription[WatchEvent]]:
        out: list[Subscription[WatchForUpdatesResponse] | Subscription[WatchEvent]] = []
        for subs in self._subscribers.values():
            out.extend(subs)
        for event_subs in self._event_subscribers.values():
            out.extend(event_subs)
        return out

    def _resync(
        self, sub: Subscription[WatchForUpdatesResponse] | Subscription[WatchEvent], why: str
    ) -> None:
        self.metrics.subscriber_resyncs += 1
        sub.fail(RpcError(Code.UNAVAILABLE, f"resync: {why}; reconnect for a fresh snapshot"))
        self._remove(sub)

    def resync_all(self, why: str) -> None:
        for sub in self._all_subscriptions():
            self._resync(sub, why)

    def shutdown(self) -> None:
        """End every stream (UNAVAILABLE) and refuse new ones: the server is stopping."""
        self._closing = True
        for sub in self._all_subscriptions():
            sub.fail(RpcError(Code.UNAVAILABLE, "server is shutting down"))
            self._remove(sub)

    # -- the pipeline ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run workers and the change stream until cancelled. ``started()`` once the store
        stream follows changes, so that watches answered from then on miss nothing."""
        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(self._work, worker)
            pending_status: list[trio.TaskStatus[None]] = [task_status]
            delay = self._restart_delay
            while True:
                opened_at = trio.current_time()
                error: Exception | None = None
                try:
                    await self._follow_source(pending_status)
                except Exception as exc:
                    error = exc
                finally:
                    self._running = False
                cause = "ended" if error is None else f"failed: {exception_summary(error)}"
                self._stream_outage.failed(f"store change stream {cause}; reopening", error)
                # Changes between the old stream and the new one are not replayed, so
                # every stream must re-list.
                self.metrics.source_restarts += 1
                self.resync_all("store change stream restarted")
                for resync in self._resyncs:
                    resync()
                if trio.current_time() - opened_at >= HEALTHY_STREAM_SECONDS:
                    delay = self._restart_delay  # it had been working: not a broken store
                await trio.sleep(delay)
                delay = min(delay * 2, self._max_restart_delay)

    async def _follow_source(self, pending_status: list[trio.TaskStatus[None]]) -> None:
        send, receive = trio.open_memory_channel[WatchEvent](self._buffer_size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch, receive)
            await nursery.start(self._source_task, send)
            self._running = True
            self._stream_outage.recovered("store change stream back")
            while pending_status:  # report started() once, on the first successful open
                pending_status.pop().started()

    async def _source_task(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with send:
            await self._source.run_events(send, task_status=task_status)

    async def _dispatch(self, receive: trio.MemoryReceiveChannel[WatchEvent]) -> None:
        workers = self._workers
        count = len(workers)
        metrics = self.metrics
        clock = time.monotonic if metrics.observe_lag is not None else None
        async with receive:
            async for event in receive:
                metrics.events_received += 1
                for observe in self._observers:
                    observe(event)
                name = event.name
                worker = workers[fnv1a_32(name.encode()) % count]
                queued = worker.pending.get(name)
                if queued is not None:
                    # Merged whoever subscribes: the queued event must not outlive a
                    # newer one (the worker's last_sent would then hold a stale update).
                    worker.pending[name] = (event, queued[1])
                    metrics.events_merged += 1
                    continue
                key = objects.watch_key_of(event.object)
                if (key is None or key not in self._subscribers) and not (
                    self._event_subscribers and self._event_subs_of(event.object)
                ):
                    # Safe to skip: a stream that subscribes later reads its snapshot
                    # after subscribing, so after this (already committed) change.
                    metrics.events_skipped += 1
                    worker.last_sent.pop(name, None)
                    continue
                worker.pending[name] = (event, clock() if clock is not None else 0.0)
                await worker.send.send(name)

    async def _work(self, worker: _Worker) -> None:
        async for name in worker.receive:
            event, read_at = worker.pending.pop(name)
            try:
                await self._handle(event, read_at, worker.last_sent)
            except Exception:
                self.metrics.worker_errors += 1
                log.exception("watch worker failed on %s %s", event.type, name)

    async def _handle(
        self,
        event: WatchEvent,
        read_at: float = 0.0,
        last_sent: dict[str, WatchForUpdatesResponse] | None = None,
    ) -> None:
        obj = event.object
        name = event.name
        if self._event_subscribers:
            self._offer_event(event, read_at)
        key = objects.watch_key_of(obj)
        subs = None if key is None else self._subscribers.get(key)
        if not subs:
            if last_sent is not None:
                last_sent.pop(name, None)
            return
        deleted = event.type == "DELETED"
        response = objects.watch_response(obj, self.namespace, deleted=deleted)
        if last_sent is not None:
            if deleted:
                last_sent.pop(name, None)
            elif last_sent.get(name) == response:
                self.metrics.updates_unchanged += 1
                return
            else:
                last_sent[name] = response
        rv = objects.resource_version(obj)
        self._offer_to(subs, obj["spec"]["actionName"], rv, response, read_at)

    def _offer_to(
        self, subs: dict[Subscription[Any], None], key: str, rv: int, item: object, read_at: float
    ) -> None:
        """Offer ``item`` to each subscription; one that is full is resynced."""
        metrics = self.metrics
        for sub in list(subs):
            offered = sub.offer(key, rv, item, read_at)
            if offered is Offered.FULL:
                self._resync(sub, f"stream fell more than {sub.capacity} actions behind")
            elif offered is Offered.ADDED:
                metrics.updates_delivered += 1
            else:
                metrics.updates_merged += 1

    def _event_subs_of(self, obj: KubeObject) -> list[dict[Subscription[WatchEvent], None]]:
        """The console streams an object's events go to: its run's, and the roots'."""
        registry = self._event_subscribers
        found = []
        run_subs = registry.get(run_key_of(obj))
        if run_subs:
            found.append(run_subs)
        if ROOTS in registry and not (obj.get("spec") or {}).get("parentActionName"):
            found.append(registry[ROOTS])
        return found

    def _offer_event(self, event: WatchEvent, read_at: float) -> None:
        rv = objects.resource_version(event.object)
        for subs in self._event_subs_of(event.object):
            self._offer_to(subs, event.name, rv, event, read_at)
