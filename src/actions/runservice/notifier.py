"""Reports every action to Flyte's run service, as Flyte's own Actions Service does.

::

    fan-out ──observe(event)──> PendingBuffer ──> N senders ──> InternalRunService
    (sync, never waits)         (one entry per     (retries,     RecordAction
                                 action, bounded)    backoff)     UpdateActionStatus
                                                         │
                                                         └──> store: mark the object once
                                                              its terminal status is in

Per action: ``RecordAction`` once (remembered in memory, so sent again after a restart,
as Flyte's service does too; an ALREADY_EXISTS answer counts as recorded), then
``UpdateActionStatus`` whenever the reported status (phase, attempts, cache status,
signal, abort reason) differs from the last one the run service answered. A child's
first appearance promotes its parent to RUNNING. A transient failure (UNAVAILABLE,
DEADLINE_EXCEEDED, ...) is retried with exponential backoff and jitter, always with the
newest state of the action; an in-band rejection (``status.code != 0``) or a permanent
error code is logged and not retried.

Durability: once the run service has acknowledged a terminal status, the object gets the
annotation ``flyte.org/terminal-status-recorded: "true"`` and is ignored from then on.
At start-up the notifier lists the store and reports every object not so marked, so a
terminal status that was not acknowledged before a restart is sent again. A terminal
state that finds the buffer full of other terminal states, or whose object could not be
marked, makes the notifier list the store again later.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Final, Protocol

import trio
from flyteidl2.common.identifier_pb2 import ActionIdentifier
from flyteidl2.workflow.internal_run_service_pb2 import UpdateActionStatusRequest
from google.protobuf.message import Message

from actions import objects, phases
from actions.runservice import messages
from actions.runservice.buffer import Offer, Pending, PendingBuffer, merge
from actions.runservice.client import RunServiceClient
from actions.store.base import KubeObject, WatchEvent
from actions.store.errors import NotFound, StoreError
from connect_proto import Code, RpcError

log = logging.getLogger(__name__)

# Worth another try: the run service or the path to it may recover.
RETRYABLE: Final = frozenset(
    {
        Code.UNAVAILABLE,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.ABORTED,
        Code.INTERNAL,
        Code.UNKNOWN,
        Code.CANCELED,
    }
)
MARK_ATTEMPTS: Final = 3
LOG_EVERY: Final = 10.0  # seconds between repeated warnings of one kind


class RunServiceStore(Protocol):
    """The part of ``Store`` the notifier uses: list to recover, annotate to mark."""

    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]: ...

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject: ...


@dataclass(slots=True)
class RunServiceMetrics:
    observed: int = 0  # events handed to observe()
    coalesced: int = 0  # folded into a report already waiting for the same action
    dropped: int = 0  # intermediate reports dropped because the buffer was full
    overflowed: int = 0  # terminal reports refused by a full buffer (a re-list recovers them)
    records: int = 0  # RecordAction calls the run service accepted
    statuses: int = 0  # UpdateActionStatus calls the run service accepted
    rejected: int = 0  # calls refused in-band or with a permanent error code (not retried)
    retries: int = 0  # calls retried after a transient failure
    marked: int = 0  # objects marked after their terminal status was acknowledged
    mark_failures: int = 0  # objects that could not be marked (a re-list retries)
    scans: int = 0  # store listings (start-up and recovery)
    invalid: int = 0  # objects that cannot be reported (identity fields missing)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Known:
    """What this process has told the run service about one action."""

    recorded: bool = False
    sent: messages.StatusKey | None = None  # last status reported (answered, either way)
    accepted: bool = False  # ... and the run service took it
    marked: bool = False
    promoted: bool = False  # a child appeared: report at least RUNNING
    rv: int = 0  # newest resourceVersion reported
    uid: str = ""  # the incarnation this is about (a name can be reused after a delete)


class _Memory:
    """``_Known`` per object name, least recently used forgotten first (a forgotten
    action costs at most a repeated call, which the run service tolerates); and, apart,
    the names of finished (marked) actions with their uid, so that the many finished
    objects a listing returns do not push out what is known of live ones."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, _Known] = OrderedDict()
        self._finished: OrderedDict[str, str] = OrderedDict()  # name -> uid

    def get(self, name: str) -> _Known:
        known = self._items.get(name)
        if known is None:
            known = self._items[name] = _Known()
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(name)
        return known

    def peek(self, name: str) -> _Known | None:
        return self._items.get(name)

    def forget(self, name: str) -> None:
        self._items.pop(name, None)

    def fresh(self, name: str) -> _Known:
        self._items.pop(name, None)
        return self.get(name)

    def finish(self, name: str, uid: str) -> None:
        self._items.pop(name, None)
        self._finished[name] = uid
        self._finished.move_to_end(name)
        if len(self._finished) > self._size:
            self._finished.popitem(last=False)

    def finished(self, name: str, uid: str = "") -> bool:
        """Whether ``name`` (this ``uid``, when given) is finished; a different uid is a
        new action under a reused name, and the old entry is dropped."""
        done = self._finished.get(name)
        if done is None:
            return False
        if uid and done and uid != done:
            del self._finished[name]
            return False
        return True

    def __len__(self) -> int:
        return len(self._items)


class _Transient(Exception):
    """A call failed in a way worth retrying."""


class _Throttle:
    """At most one log line per ``interval`` seconds, counting what it held back."""

    def __init__(self, interval: float = LOG_EVERY) -> None:
        self._interval = interval
        self._next = 0.0
        self._held = 0

    def ready(self) -> int | None:
        """None: stay quiet; else the number of lines held back since the last one."""
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return None
        self._next = now + self._interval
        held, self._held = self._held, 0
        return held


def _more(held: int) -> str:
    return f" (and {held} more since the last report)" if held else ""


class RunServiceNotifier:
    """Feed it with ``observe(event)``; ``run()`` sends (see the module docstring).

    ``observe`` is synchronous and O(1): call it from the trio thread, for every store
    event, before any filtering by subscribers. ``resync()`` after a gap in the events.
    The notifier owns ``client`` and closes it when ``run`` ends. ``buffer_size`` bounds the actions
    waiting to be reported; ``senders`` calls run at once; ``call_timeout`` bounds each
    call (also sent as the call's deadline) and ``store_timeout`` each store request;
    retries wait ``backoff_base * 2**n`` seconds, at most ``backoff_max``, scaled by a
    random factor in [0.5, 1) (jitter). ``memory`` bounds the actions remembered.
    """

    def __init__(
        self,
        client: RunServiceClient,
        store: RunServiceStore,
        *,
        buffer_size: int = 10_000,
        senders: int = 4,
        call_timeout: float = 10.0,
        store_timeout: float = 10.0,
        backoff_base: float = 0.2,
        backoff_max: float = 30.0,
        memory: int = 100_000,
        rescan_delay: float = 5.0,
        scan_on_start: bool = True,
        metrics: RunServiceMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if senders < 1 or memory < 1:
            raise ValueError("senders and memory must be at least 1")
        if call_timeout <= 0 or store_timeout <= 0 or backoff_base <= 0:
            raise ValueError("timeouts and backoff_base must be greater than 0")
        self._client = client
        self._store = store
        self._buffer = PendingBuffer(buffer_size)
        self._senders = senders
        self._call_timeout = call_timeout
        self._store_timeout = store_timeout
        self._backoff_base = backoff_base
        self._backoff_max = max(backoff_max, backoff_base)
        self._memory = _Memory(memory)
        self._rescan_delay = rescan_delay
        self._scan_on_start = scan_on_start
        self.metrics = metrics or RunServiceMetrics()
        self._rng = rng or random.Random()
        self._wakeup = trio.Event()
        self._rescan = trio.Event()
        self._scan_everything = False
        self._reachable = True
        self._drop_log = _Throttle()
        self._reject_log = _Throttle()
        self._retry_log = _Throttle()

    # -- the hot path ----------------------------------------------------------------

    def observe(self, event: WatchEvent) -> None:
        """Take note of a store event; never waits, never raises."""
        try:
            self.metrics.observed += 1
            obj = event.object
            name = event.name
            deleted = event.type == "DELETED"
            if messages.is_marked(obj):
                self._finished(name, obj, deleted=deleted)
                return
            final = messages.is_final(obj, deleted=deleted)
            rv = objects.resource_version(obj)
            self._offer(name, Pending(obj, rv, deleted, final))
        except Exception as exc:  # a malformed object must not reach the fan-out
            self.metrics.invalid += 1
            held = self._reject_log.ready()
            if held is not None:
                log.warning("run service notifier: ignored a %s event: %s: %s%s",
                            event.type, type(exc).__name__, exc, _more(held))  # fmt: skip

    @property
    def reachable(self) -> bool:
        """False while calls fail with transient errors (a gauge)."""
        return self._reachable

    def buffered(self) -> int:
        """Reports waiting (a gauge)."""
        return len(self._buffer)

    def _finished(self, name: str, obj: KubeObject, *, deleted: bool) -> None:
        """The run service has this object's terminal status (it is marked)."""
        self._buffer.discard(name)
        if deleted:
            self._memory.forget(name)  # the name may come back as a new action
        else:
            self._memory.finish(name, messages.uid_of(obj))

    def _offer(self, name: str, item: Pending) -> None:
        outcome = self._buffer.offer(name, item)
        if outcome is Offer.MERGED:
            self.metrics.coalesced += 1
        elif outcome in (Offer.DROPPED, Offer.EVICTED):
            self.metrics.dropped += 1
            held = self._drop_log.ready()
            if held is not None:
                log.warning(
                    "run service notifier: %d actions waiting, buffer full; dropped an "
                    "intermediate status%s (the next change of each action is sent)",
                    len(self._buffer), _more(held),
                )  # fmt: skip
        elif outcome is Offer.OVERFLOW:
            self.metrics.overflowed += 1
            self._rescan.set()
            held = self._drop_log.ready()
            if held is not None:
                log.warning(
                    "run service notifier: buffer full of terminal statuses; %s waits for "
                    "a re-list of the store%s",
                    name, _more(held),
                )  # fmt: skip
            return
        if outcome is not Offer.DROPPED:
            self._wakeup.set()

    # -- the senders -----------------------------------------------------------------

    def resync(self) -> None:
        """Events may have been missed (the store's change stream was reopened without
        replaying the gap): list the store again and report what is not marked."""
        self._scan_everything = True
        self._rescan.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send until cancelled; then close the client. ``started()`` at once: events
        observed before are kept. Start it once the event source follows changes, so
        that the start-up listing and the events overlap rather than leave a gap."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._senders):
                    nursery.start_soon(self._send_loop)
                task_status.started()
                if self._scan_on_start:
                    await self._scan(everything=True)
                while True:
                    await self._rescan.wait()
                    while True:  # let the buffer drain first
                        await trio.sleep(self._rescan_delay)
                        if len(self._buffer) <= self._buffer.capacity // 2:
                            break
                    self._rescan = trio.Event()
                    everything, self._scan_everything = self._scan_everything, False
                    await self._scan(everything=everything)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._call_timeout):
                await self._client.aclose()

    async def _scan(self, *, everything: bool) -> None:
        """Offer every unmarked object (``everything``) or only its terminal ones."""
        self.metrics.scans += 1
        try:
            with trio.fail_after(self._store_timeout):
                items, _ = await self._store.list({})
        except (StoreError, OSError, trio.TooSlowError) as exc:
            self._scan_everything |= everything
            log.warning("run service notifier: cannot list the store (%s); trying again "
                        "in %g s", _why(exc), self._rescan_delay)  # fmt: skip
            self._rescan.set()
            return
        for obj in items:
            name = (obj.get("metadata") or {}).get("name")
            if not name:
                continue
            if messages.is_marked(obj):
                self._finished(name, obj, deleted=False)  # no child promotes it again
                continue
            final = messages.is_final(obj, deleted=False)
            if everything or final:
                self._offer(name, Pending(obj, objects.resource_version(obj), False, final))

    async def _send_loop(self) -> None:
        while True:
            taken = self._buffer.take()
            if taken is None:
                if self._wakeup.is_set():
                    self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            name, item = taken
            try:
                await self._deliver(name, item)
            except Exception:
                log.exception("run service notifier: failed on %s", name)
            finally:
                if self._buffer.done(name):
                    self._wakeup.set()

    async def _deliver(self, name: str, item: Pending) -> None:
        """Report ``item``, retrying transient failures with the newest state."""
        attempt = 0
        while True:
            newer = self._buffer.take_newer(name)
            if newer is not None:
                item = merge(item, newer)
            try:
                await self._report(name, item)
            except _Transient as exc:
                attempt += 1
                self.metrics.retries += 1
                delay = self.backoff(attempt)
                self._unreachable(str(exc), delay)
                await trio.sleep(delay)
                continue
            if not self._reachable:
                self._reachable = True
                log.info("run service notifier: run service reachable again")
            return

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
        ceiling = min(self._backoff_max, self._backoff_base * 2.0 ** min(attempt - 1, 62))
        return ceiling * (0.5 + self._rng.random() / 2)

    def _unreachable(self, why: str, delay: float) -> None:
        if self._reachable:
            self._reachable = False
            log.warning("run service notifier: %s; retrying with backoff", why)
            return
        held = self._retry_log.ready()
        if held is not None:
            log.warning("run service notifier: still failing: %s; next try in %.1f s%s",
                        why, delay, _more(held))  # fmt: skip

    async def _report(self, name: str, item: Pending) -> None:
        obj = item.obj
        uid = messages.uid_of(obj) if obj is not None else ""
        if self._memory.finished(name, uid):
            return
        known = self._memory.get(name)
        if uid and known.uid and uid != known.uid:
            known = self._memory.fresh(name)  # deleted and created again
        known.uid = uid or known.uid
        if obj is None:
            if item.promote is not None:
                await self._promote_parent(item.promote, known)
            return
        if item.rv and item.rv < known.rv:
            return  # a newer state was reported already
        try:
            action_id = messages.action_id_of(obj)
        except messages.BadObject as exc:
            self.metrics.invalid += 1
            log.warning("run service notifier: cannot report %s: %s", name, exc)
            return
        if not known.recorded:
            await self._record(name, obj, known)
            parent = messages.parent_of(obj)
            if parent and not item.final:
                self._promote(action_id, parent)
        key = messages.status_key(obj, deleted=item.deleted, promoted=known.promoted)
        if key != known.sent:
            request = messages.status_request(obj, key)
            await self._update_status(name, request, key, known)
        known.rv = max(known.rv, item.rv)
        if item.deleted:
            self._memory.forget(name)
        elif key.terminal and known.accepted and not known.marked:
            await self._mark(name, known)

    async def _record(self, name: str, obj: KubeObject, known: _Known) -> None:
        request = messages.record_request(obj)
        # Already there (say, recorded before a restart) is what was asked for.
        accepted = await self._call(
            "RecordAction", self._client.record_action, request, name, already_ok=True
        )
        known.recorded = True  # accepted or refused for good: not asked again
        if accepted:
            self.metrics.records += 1

    async def _update_status(
        self,
        name: str,
        request: UpdateActionStatusRequest,
        key: messages.StatusKey,
        known: _Known,
    ) -> None:
        accepted = await self._call(
            "UpdateActionStatus", self._client.update_action_status, request, name
        )
        known.sent = key
        known.accepted = accepted
        if accepted:
            self.metrics.statuses += 1

    def _promote(self, child: ActionIdentifier, parent: str) -> None:
        """A child appeared: its parent runs. Reported through the parent's own entry so
        that it is ordered with the parent's other reports."""
        parent_name = messages.parent_object_name(child, parent)
        if self._memory.finished(parent_name):
            return
        known = self._memory.get(parent_name)
        if known.promoted:
            return
        known.promoted = True
        parent_id = ActionIdentifier(run=child.run, name=parent)
        self._offer(parent_name, Pending(None, promote=parent_id))

    async def _promote_parent(self, parent_id: ActionIdentifier, known: _Known) -> None:
        sent = known.sent
        if sent is not None and (sent.terminal or sent.phase == phases.RUNNING):
            return  # already running or beyond
        name = messages.parent_object_name(parent_id, parent_id.name)
        request = messages.promotion_request(parent_id)
        await self._update_status(name, request, messages.PROMOTION_KEY, known)

    async def _call(
        self,
        method: str,
        call: Callable[..., Awaitable[Message]],
        request: Message,
        name: str,
        *,
        already_ok: bool = False,
    ) -> bool:
        """True if the run service accepted the call; False if it refused (logged, not
        retried). Raises _Transient for failures worth retrying."""
        try:
            with trio.move_on_after(self._call_timeout) as scope:
                response = await call(request, deadline=self._call_timeout)
            if scope.cancelled_caught:
                raise _Transient(f"{method} got no answer within {self._call_timeout:g} s")
        except RpcError as exc:
            if exc.code in RETRYABLE:
                raise _Transient(f"{method} failed: {exc.code.name}: {exc.message}") from None
            if already_ok and exc.code is Code.ALREADY_EXISTS:
                return True
            self._rejected(method, name, f"{exc.code.name}: {exc.message}")
            return False
        except Exception as exc:  # transport or decoding trouble outside RpcError
            raise _Transient(f"{method} failed: {_why(exc)}") from None
        status = getattr(response, "status", None)
        code = int(getattr(status, "code", 0))
        if code == 0 or (already_ok and code == Code.ALREADY_EXISTS.grpc):
            return True
        self._rejected(method, name, f"code {code}: {getattr(status, 'message', '')}")
        return False

    def _rejected(self, method: str, name: str, why: str) -> None:
        self.metrics.rejected += 1
        held = self._reject_log.ready()
        if held is not None:
            log.warning("run service refused %s for %s (%s); not retried%s",
                        method, name, why, _more(held))  # fmt: skip

    async def _mark(self, name: str, known: _Known) -> None:
        """Remember on the object that the run service has its terminal status."""
        for attempt in range(1, MARK_ATTEMPTS + 1):
            try:
                with trio.fail_after(self._store_timeout):
                    await self._store.patch_annotations(name, {messages.TERMINAL_RECORDED: "true"})
            except NotFound:
                known.marked = True  # gone: nothing left to report on a restart
                return
            except (StoreError, OSError, trio.TooSlowError) as exc:
                if attempt == MARK_ATTEMPTS:
                    self.metrics.mark_failures += 1
                    log.warning("run service notifier: cannot mark %s (%s); the store will "
                                "be listed again", name, _why(exc))  # fmt: skip
                    self._rescan.set()
                    return
                await trio.sleep(self.backoff(attempt))
                continue
            known.marked = True
            self.metrics.marked += 1
            self._memory.finish(name, known.uid)
            return


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__
