"""Root objects (label ``flyte.org/is-root=true``) kept in creation order, for paging.

Every run has exactly one root action, so listing runs is listing roots. Both backends
hold their objects in memory (the embedded store's index, the Kubernetes informer's
cache); this keeps the roots among them sorted by ``(creationTimestamp, name)``, so a page
of runs, newest first, costs the page (plus the roots a label filter skips), never a scan
of the store. Additions and removals are a bisection and one list insert or delete.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from typing import Final

from actions.store.base import RootCursor

ROOT_LABEL: Final = ("flyte.org/is-root", "true")


def is_root(labels: dict[str, str]) -> bool:
    return labels.get(ROOT_LABEL[0]) == ROOT_LABEL[1]


class RootOrder:
    """``(creationTimestamp, name)`` of every root, ascending; names map to their key."""

    __slots__ = ("_keys", "_of")

    def __init__(self) -> None:
        self._keys: list[RootCursor] = []
        self._of: dict[str, RootCursor] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._keys = []
        self._of = {}

    def add(self, name: str, created: str) -> None:
        key = (created, name)
        old = self._of.get(name)
        if old == key:
            return
        if old is not None:
            self.discard(name)
        self._of[name] = key
        insort(self._keys, key)

    def discard(self, name: str) -> None:
        key = self._of.pop(name, None)
        if key is None:
            return
        i = bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def newest_first(self, before: RootCursor | None) -> Iterator[RootCursor]:
        """Keys strictly older than ``before`` (all when None), newest first. The list
        may change between pages, not while one page is taken (callers hold no await)."""
        keys = self._keys
        i = len(keys) if before is None else bisect_left(keys, before)
        while i > 0:
            i -= 1
            yield keys[i]


def take_page(
    order: RootOrder,
    before: RootCursor | None,
    limit: int,
    matches: Callable[[str], bool],
) -> tuple[list[str], RootCursor | None]:
    """Up to ``limit`` names of roots older than ``before`` that ``matches``, newest
    first, and the cursor to continue from (None when no older root is left)."""
    names: list[str] = []
    last: RootCursor | None = None
    for key in order.newest_first(before):
        if len(names) >= limit:
            return names, last
        last = key
        if matches(key[1]):
            names.append(key[1])
    return names, None


__all__ = ["ROOT_LABEL", "RootOrder", "is_root", "take_page"]
