"""The last state of actions deleted lately, for ``GetAction``.

Abort deletes an action at once (with no executor's finalizer to keep it), so its abort
reason lives only in the DELETED event's object. The fan-out shows every store event to
``RecentDeletions.observe``, which keeps the last ``capacity`` deleted objects for
``max_age`` seconds: enough for a watcher that sees an action turn ABORTED to ask why.
It keeps them without what a view never shows and what may be large (the task template,
environment, plugin state, managed fields): a few hundred bytes to a few KB each.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from actions.store.base import KubeObject, WatchEvent

DEFAULT_CAPACITY: Final = 1_000
DEFAULT_MAX_AGE: Final = 600.0
_UNSHOWN: Final = {
    "metadata": frozenset({"managedFields", "ownerReferences", "finalizers"}),
    "spec": frozenset({"taskTemplate", "envVars", "traceSpec"}),
    "status": frozenset({"stateJson", "pluginState"}),
}


def _trimmed(obj: KubeObject) -> KubeObject:
    out = dict(obj)
    for part, unshown in _UNSHOWN.items():
        value = obj.get(part)
        if isinstance(value, dict):
            out[part] = {k: v for k, v in value.items() if k not in unshown}
    return out


class RecentDeletions:
    """Object name -> its last state, for the newest ``capacity`` deletions."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._last: OrderedDict[str, tuple[float, KubeObject]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def observe(self, event: WatchEvent) -> None:
        """A fan-out observer: synchronous, never raising."""
        if event.type == "ADDED":
            self._last.pop(event.name, None)  # the name was reused
        elif event.type == "DELETED":
            name = event.name
            self._last.pop(name, None)
            self._last[name] = (self._clock(), _trimmed(event.object))
            while len(self._last) > self.capacity:
                self._last.popitem(last=False)

    def get(self, name: str) -> KubeObject | None:
        entry = self._last.get(name)
        if entry is None:
            return None
        if self._clock() - entry[0] > self.max_age:
            del self._last[name]
            return None
        return entry[1]
