"""Condition timeouts where no executor runs (``actions.executor: none``).

Flyte's executor fails a condition that was not signalled within its ConditionAction's
timeout. Without it (the embedded store, or a cluster without Flyte's executor) the
service does it: ``ConditionTimer`` looks at the paused conditions every ``interval``
seconds and writes TIMED_OUT on those past their deadline. Several replicas may do it at
once: the write is guarded by resourceVersion, and a terminal condition is left alone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final

import trio

from actions import naming, objects, phases, transitions
from actions.log_policy import is_logged
from actions.store.base import KubeObject, Store
from actions.store.errors import Conflict, NotFound, StoreError

log = logging.getLogger(__name__)

_CONDITIONS: Final = {naming.LABEL_ACTION_TYPE: objects.TYPE_CONDITION}
_WRITE_ATTEMPTS: Final = 5


class ConditionTimer:
    def __init__(self, store: Store, *, interval: float = 1.0) -> None:
        self._store = store
        self._interval = interval

    async def run(self) -> None:
        """Until cancelled; a store that fails is tried again at the next tick."""
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                # Logged already (by the store) when it is a store outage.
                level = logging.DEBUG if is_logged(exc) else logging.WARNING
                log.log(level, "condition timeouts: store failed: %s", exc)
            await trio.sleep(self._interval)

    async def tick(self, now: datetime | None = None) -> int:
        """Time out every due condition; returns how many were written."""
        now = now or datetime.now(UTC)
        listed, _ = await self._store.list(_CONDITIONS)
        written = 0
        for obj in listed:
            if objects.is_trace(obj) or objects.phase_of_object(obj) != phases.PAUSED:
                continue
            if transitions.apply_condition_timeout(obj, now) is not None:
                written += await self._time_out(obj, now)
        return written

    async def _time_out(self, obj: KubeObject, now: datetime) -> int:
        name = obj["metadata"]["name"]
        for _ in range(_WRITE_ATTEMPTS):
            status = transitions.apply_condition_timeout(obj, now)
            if status is None:
                return 0  # signalled or finished meanwhile
            try:
                await self._store.update_status({**obj, "status": status})
            except Conflict:
                try:
                    obj = await self._store.get(name)
                except NotFound:
                    return 0
                continue
            except NotFound:
                return 0
            log.info("condition %s timed out", name)
            return 1
        return 0
