"""``ObservedStore``: a Store that notices when its backend stops reading or writing.

The backends report what they can know without trying (the Kubernetes store: API
server unreachable, watch cache not synced). What they cannot know in advance (the
database file was truncated, the disk is full, a file became read-only) only shows when
a request fails. The composition root hands the service and the fan-out this wrapper
instead of the store itself, so that:

- ``ready()`` (``/readyz``, grpc.health.v1) says "store cannot write" or "store cannot
  read" while such failures continue: a failure marks the store not ready for
  ``hold`` seconds after the last one (so a store that nobody calls becomes ready
  again and is tried, as a load balancer's outlier detection does), a success of the
  same kind clears it at once;
- the first failure is logged at ERROR in one line naming the store and the cause,
  repeats at most every ``log_every`` seconds with a count, and the recovery once;
  a failure while the backend itself reports not ready (its CRD deleted, its API
  server unreachable: the backend has logged that, naming it) is logged at DEBUG only;
- a failure that is not a store error (an ``sqlite3.DatabaseError`` for a corrupt
  file, say) reaches the service as ``StoreUnavailable``, so callers get UNAVAILABLE
  with the cause instead of INTERNAL;
- the exception a caller gets for such a failure is marked as logged
  (``log_policy.mark_logged``), so that code that retries on it does not log it again;
- a change stream that fails is re-raised at once: its consumer (the fan-out) owns the
  pause before the next attempt, so the stream is back within that pause once the
  store works again, not after a second back-off added to it; one that opens is a read
  that works, and clears "cannot read" at once.

Answers that are the store working as designed (NotFound, Conflict, AlreadyExists,
OwnerTerminating, Invalid, TooLarge, Gone) count as successes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import trio

from actions.log_policy import mark_logged
from actions.store.base import (
    KubeObject,
    PropagationPolicy,
    RootCursor,
    RootPage,
    Store,
    WatchEvent,
)
from actions.store.errors import Gone, Invalid, ResourceMissing, StoreError, StoreUnavailable

log = logging.getLogger("actions.store_health")

T = TypeVar("T")
Kind = Literal["read", "write"]


@dataclass
class _Failing:
    """A kind of access (read or write) that fails."""

    message: str
    first: float
    last: float
    logged: float  # when it was last logged
    count: int = 0  # failures since then
    total: int = 1
    loud: bool = True  # logged at ERROR (else the backend had reported the cause)


class ObservedStore:
    """Wraps ``inner``; ``label`` names it in log lines ("embedded store /data/flyte.sqlite3")."""

    def __init__(
        self,
        inner: Store,
        label: str,
        *,
        hold: float = 10.0,
        log_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.namespace = inner.namespace
        self.label = label
        self._hold = hold
        self._log_every = log_every
        self._clock = clock
        self._failing: dict[Kind, _Failing] = {}
        self._closed = False

    # -- observation

    def _succeeded(self, kind: Kind) -> None:
        failing = self._failing.pop(kind, None)
        if failing is not None:
            log.log(logging.INFO if failing.loud else logging.DEBUG,
                    "%s: %ss work again (after %d failures)", self.label, kind,
                    failing.total)  # fmt: skip

    def _failed(self, kind: Kind, exc: BaseException, raised: BaseException | None = None) -> None:
        """Count and log the failure ``exc``, and mark the exception the caller gets
        (``raised``, else ``exc``) as logged: callers that retry need not log it again."""
        if self._closed:
            return  # shutting down: the store is closed on purpose
        mark_logged(exc if raised is None else raised)
        now = self._clock()
        message = str(exc) or type(exc).__name__
        # The backend knows (and has logged, naming it) why it cannot serve, or reports
        # this cause itself (a missing CRD): an echo of that here would be a second line.
        loud = self.inner.ready()[0] and not isinstance(exc, ResourceMissing)
        level = logging.ERROR if loud else logging.DEBUG
        failing = self._failing.get(kind)
        if failing is None or (loud and not failing.loud):
            total = 1 if failing is None else failing.total + 1
            self._failing[kind] = _Failing(message, now, now, now, total=total, loud=loud)
            log.log(level, "%s cannot %s: %s", self.label, kind, message)
            return
        failing.last = now
        failing.message = message
        failing.count += 1
        failing.total += 1
        if now - failing.logged >= self._log_every:
            log.log(level, "%s still cannot %s (%d failures in %.0fs): %s", self.label, kind,
                    failing.count, now - failing.logged, message)  # fmt: skip
            failing.logged, failing.count = now, 0

    async def _observe(self, kind: Kind, call: Awaitable[T]) -> T:
        try:
            result = await call
        except StoreUnavailable as exc:
            self._failed(kind, exc)
            raise
        except StoreError:
            self._succeeded(kind)  # the store answered: it works
            raise
        except Exception as exc:
            error = StoreUnavailable(f"{self.label}: {exc}")
            self._failed(kind, exc, error)
            raise error from exc
        self._succeeded(kind)
        return result

    # -- readiness

    def ready(self) -> tuple[bool, str]:
        ok, why = self.inner.ready()
        if not ok:
            return ok, why
        now = self._clock()
        for kind, failing in self._failing.items():
            if now - failing.last < self._hold:
                return False, f"store cannot {kind}: {failing.message}"
        return True, "ok"

    # -- the Store interface

    async def create(self, obj: KubeObject) -> KubeObject:
        return await self._observe("write", self.inner.create(obj))

    async def create_with_status(self, obj: KubeObject, status: dict[str, Any]) -> KubeObject:
        return await self._observe("write", self.inner.create_with_status(obj, status))

    async def get(self, name: str) -> KubeObject:
        return await self._observe("read", self.inner.get(name))

    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]:
        return await self._observe("read", self.inner.list(labels))

    async def list_roots(
        self, labels: dict[str, str], *, limit: int, before: RootCursor | None = None
    ) -> RootPage:
        return await self._observe(
            "read", self.inner.list_roots(labels, limit=limit, before=before)
        )

    async def update_status(self, obj: KubeObject) -> KubeObject:
        return await self._observe("write", self.inner.update_status(obj))

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject:
        return await self._observe("write", self.inner.patch_annotations(name, annotations))

    async def delete(self, name: str, propagation: PropagationPolicy = "Background") -> None:
        await self._observe("write", self.inner.delete(name, propagation))

    async def latest(self, name: str) -> KubeObject | None:
        return await self._observe("read", self.inner.latest(name))

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        since: str | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # No pause here before re-raising: the consumer's retry loop is the one place
        # that waits between attempts, so that a store that works again is followed
        # again within that loop's pause, not this one's added to it.
        opened = _StartedThen(task_status, lambda: self._succeeded("read"))
        try:
            await self.inner.run_events(send, since=since, task_status=opened)
        except StoreUnavailable as exc:
            self._failed("read", exc)
            raise
        except (Gone, Invalid):
            raise  # the caller re-lists
        except Exception as exc:  # NotFound here: the resource type itself is gone
            error = StoreUnavailable(
                f"{self.label}: change stream failed: {type(exc).__name__}: {exc}"
            )
            self._failed("read", exc, error)
            raise error from exc

    async def aclose(self) -> None:
        self._closed = True
        await self.inner.aclose()


class _StartedThen:
    """``task_status``, and ``then()`` once the task has started: a change stream that
    follows the store again is a read that works (readiness need not wait for another)."""

    def __init__(self, task_status: trio.TaskStatus[None], then: Callable[[], None]) -> None:
        self._task_status = task_status
        self._then = then

    def started(self, value: None = None) -> None:
        self._task_status.started()
        self._then()


def _check_protocol(store: ObservedStore) -> Store:
    return store  # mypy: ObservedStore is a Store


__all__ = ["ObservedStore"]
