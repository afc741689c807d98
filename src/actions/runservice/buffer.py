"""The notifier's bounded, coalescing buffer of reports still to send (no I/O, no awaits).

One entry per action (keyed by object name), holding the newest state seen; a newer
event for an action already waiting replaces the state in place, so the action keeps its
place in line. Entries are taken oldest first. While an action is being sent ("busy"),
newer states for it wait aside (at most one per busy action) and go back in line when the
send finishes, so that one action's reports are never sent concurrently or out of order.

When the buffer is full:

- an intermediate state of a new action is dropped (its next event carries the whole
  object again, so only that intermediate phase is lost);
- a final state (terminal phase, or deleted) takes the place of the oldest intermediate
  one; if every waiting entry is final, the buffer reports ``OVERFLOW`` and the caller
  must recover the state some other way (the notifier re-lists the store).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from flyteidl2.common.identifier_pb2 import ActionIdentifier

KubeObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pending:
    """A report to send for one action."""

    obj: KubeObject | None  # newest state; None: only a parent promotion is asked for
    rv: int = 0  # obj's resourceVersion
    deleted: bool = False
    final: bool = False  # terminal or deleted: must not be dropped
    promote: ActionIdentifier | None = None  # this action's id, when a child promoted it


def merge(old: Pending, new: Pending) -> Pending:
    """Fold ``new`` into ``old``: the newer object wins, ``final`` and ``promote`` stick."""
    if new.obj is None or (old.obj is not None and new.rv and old.rv > new.rv):
        base = old
    else:
        base = new
    final = old.final or new.final
    promote = new.promote if new.promote is not None else old.promote
    if base.final == final and base.promote is promote:
        return base  # the common case on the hot path: no new object
    return Pending(base.obj, base.rv, base.deleted, final, promote)


class Offer(enum.Enum):
    QUEUED = "queued"  # a new entry
    MERGED = "merged"  # folded into the entry already waiting for this action
    EVICTED = "evicted"  # a final state queued in place of an intermediate one
    DROPPED = "dropped"  # an intermediate state refused: the buffer is full
    OVERFLOW = "overflow"  # a final state refused: the buffer is full of final states


class PendingBuffer:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._droppable: OrderedDict[str, None] = OrderedDict()  # non-final, oldest first
        self._busy: set[str] = set()
        self._aside: dict[str, Pending] = {}  # newer states of busy actions

    def __len__(self) -> int:
        return len(self._pending) + len(self._aside)

    def offer(self, name: str, item: Pending) -> Offer:
        if name in self._busy:
            old = self._aside.get(name)
            self._aside[name] = item if old is None else merge(old, item)
            return Offer.QUEUED if old is None else Offer.MERGED
        old = self._pending.get(name)
        if old is not None:
            merged = merge(old, item)
            self._pending[name] = merged
            if merged.final:
                self._droppable.pop(name, None)
            return Offer.MERGED
        outcome = Offer.QUEUED
        if len(self._pending) >= self.capacity:
            if not item.final:
                return Offer.DROPPED
            if not self._droppable:
                return Offer.OVERFLOW
            victim, _ = self._droppable.popitem(last=False)
            del self._pending[victim]
            outcome = Offer.EVICTED
        self._pending[name] = item
        if not item.final:
            self._droppable[name] = None
        return outcome

    def take(self) -> tuple[str, Pending] | None:
        """The oldest waiting entry, now busy until ``done(name)``."""
        if not self._pending:
            return None
        name, item = self._pending.popitem(last=False)
        self._droppable.pop(name, None)
        self._busy.add(name)
        return name, item

    def take_newer(self, name: str) -> Pending | None:
        """A newer state that arrived for busy ``name`` meanwhile (the sender folds it in
        before retrying)."""
        return self._aside.pop(name, None)

    def done(self, name: str) -> bool:
        """``name`` is no longer busy; a state that arrived meanwhile goes back in line
        (past the capacity if need be: at most one per busy action). True if it did."""
        self._busy.discard(name)
        item = self._aside.pop(name, None)
        if item is None:
            return False
        self._pending[name] = item
        if not item.final:
            self._droppable[name] = None
        return True

    def discard(self, name: str) -> None:
        """Forget whatever waits for ``name`` (the run service already has its end)."""
        if self._pending.pop(name, None) is not None:
            self._droppable.pop(name, None)
        self._aside.pop(name, None)
