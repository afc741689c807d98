"""The embedded store's in-memory index, and the write transaction built on top of it.

The index holds every object of the store (its JSON as stored, plus the fields the
lookups need) and answers ``get``, ``list`` by labels and the cascade's "dependents of"
without touching SQLite; SQLite is the durable log the index is built from. It is only
used from the trio thread, so it needs no locks: writes reach it after they committed.

A ``Tx`` is one group commit's writes, computed on the trio thread before anything is
written: it reads through to the index and sees the earlier writes of its own batch, and
records each write as a ``Change`` (with the object for the watch event). Each write
encodes its object once; the JSON is what SQLite stores, what the change log holds and
what later reads decode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from actions.store import _meta
from actions.store._roots import RootOrder, is_root
from actions.store._sqlite import Change
from actions.store.base import EventType, KubeObject


def _owner_refs(obj: KubeObject) -> tuple[tuple[str, str], ...]:
    refs = obj["metadata"].get("ownerReferences") or ()
    return tuple((ref["name"], ref["uid"]) for ref in refs)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored object. ``body`` is its compact JSON; ``labels`` is never mutated;
    ``deleting``: it has a deletionTimestamp (a finalizer holds it)."""

    name: str
    uid: str
    rv: int
    body: str
    labels: dict[str, str]
    owners: tuple[tuple[str, str], ...]
    created: str
    deleting: bool

    @classmethod
    def of(cls, obj: KubeObject, body: str, rv: int) -> Entry:
        meta = obj["metadata"]
        return cls(
            meta["name"],
            meta["uid"],
            rv,
            body,
            meta.get("labels") or {},
            _owner_refs(obj),
            meta.get("creationTimestamp") or "",
            "deletionTimestamp" in meta,
        )

    @classmethod
    def decode(cls, body: str, rv: int) -> tuple[Entry, KubeObject]:
        obj = _meta.loads(body)
        return cls.of(obj, body, rv), obj

    def object(self) -> KubeObject:
        """A fresh copy of the object, the caller's to keep and change."""
        obj: KubeObject = _meta.loads(self.body)
        return obj


class Index:
    """Objects by name, by label and by owner, and the roots in creation order (``roots``);
    ``rv`` is the change they reflect."""

    __slots__ = ("_by_label", "_dependents", "objects", "roots", "rv")

    def __init__(self) -> None:
        self.rv = 0
        self.objects: dict[str, Entry] = {}
        self.roots = RootOrder()
        self._by_label: dict[tuple[str, str], set[str]] = {}
        # owner name -> {dependent name: the owner uid its reference names}
        self._dependents: dict[str, dict[str, str]] = {}

    def reset(self, rv: int, entries: Iterable[Entry]) -> None:
        self.rv = 0
        self.objects = {}
        self._by_label = {}
        self._dependents = {}
        self.roots.clear()
        for entry in entries:
            self._add(entry)
        self.rv = rv

    def get(self, name: str) -> Entry | None:
        return self.objects.get(name)

    def select(self, labels: dict[str, str]) -> list[Entry]:
        """Entries whose labels include all of ``labels``, by name. Cost: the smallest
        matching label set, not the store."""
        objects = self.objects
        if not labels:
            return [objects[name] for name in sorted(objects)]
        sets = [self._by_label.get(item) for item in labels.items()]
        if not all(sets):
            return []
        smallest = min(sets, key=len)  # type: ignore[arg-type]
        assert smallest is not None
        found = []
        for name in smallest:
            entry = objects[name]
            entry_labels = entry.labels
            if all(entry_labels.get(key) == value for key, value in labels.items()):
                found.append(entry)
        found.sort(key=lambda e: e.name)
        return found

    def dependents(self, owner: str) -> dict[str, str]:
        """dependent name -> the owner uid it references (empty if none)."""
        return self._dependents.get(owner) or {}

    def apply(self, rv: int, kind: EventType, name: str, entry: Entry | None) -> None:
        """One committed change, in resourceVersion order."""
        old = self.objects.get(name)
        if old is not None:
            self._drop(old)
        if kind != "DELETED" and entry is not None:
            self._add(entry)
        self.rv = rv

    def _add(self, entry: Entry) -> None:
        name = entry.name
        self.objects[name] = entry
        by_label = self._by_label
        for item in entry.labels.items():
            names = by_label.get(item)
            if names is None:
                by_label[item] = {name}
            else:
                names.add(name)
        for owner, uid in entry.owners:
            self._dependents.setdefault(owner, {})[name] = uid
        if is_root(entry.labels):
            self.roots.add(name, entry.created)

    def _drop(self, entry: Entry) -> None:
        name = entry.name
        del self.objects[name]
        by_label = self._by_label
        for item in entry.labels.items():
            names = by_label.get(item)
            if names is not None:
                names.discard(name)
                if not names:
                    del by_label[item]
        for owner, _ in entry.owners:
            deps = self._dependents.get(owner)
            if deps is not None:
                deps.pop(name, None)
                if not deps:
                    del self._dependents[owner]
        if is_root(entry.labels):
            self.roots.discard(name)


_GONE = object()


class Tx:
    """Writes of one batch over the index. Each write takes the next resourceVersion;
    ``savepoint``/``rollback`` undo a failing write alone."""

    __slots__ = ("_index", "_overlay", "base_rv", "changes", "entries", "events", "rv")

    def __init__(self, index: Index) -> None:
        self._index = index
        self.base_rv = index.rv
        self.rv = index.rv
        self._overlay: dict[str, Entry | None] = {}  # name -> written entry, None: deleted
        self.changes: list[Change] = []
        self.events: list[KubeObject] = []  # the object of each change, for the event
        self.entries: list[Entry] = []  # the index entry of each change

    # -- reads --------------------------------------------------------------------------

    def entry(self, name: str) -> Entry | None:
        found = self._overlay.get(name, _GONE)
        if found is _GONE:
            return self._index.get(name)
        return found  # type: ignore[return-value]

    def load(self, name: str) -> KubeObject | None:
        entry = self.entry(name)
        return None if entry is None else entry.object()

    def dependents(self, owner: str, owner_uid: str) -> list[str]:
        """Names of the objects whose ownerReferences name ``owner`` with ``owner_uid``."""
        names = {dep for dep, uid in self._index.dependents(owner).items() if uid == owner_uid}
        for name, entry in self._overlay.items():
            if entry is not None and (owner, owner_uid) in entry.owners:
                names.add(name)
            else:
                names.discard(name)
        return sorted(names)

    # -- writes -------------------------------------------------------------------------

    def _stamp(
        self, obj: KubeObject, kind: EventType, *, check_size: bool, detach: bool = False
    ) -> Entry:
        """Encode ``obj`` as the next change. ``detach``: the event and the index get a
        copy decoded from the stored JSON, so nothing kept is the caller's."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        body = _meta.dumps(obj)
        if check_size:
            _meta.check_body_size(obj, body)
        if detach:
            obj = _meta.loads(body)
        entry = Entry.of(obj, body, self.rv)
        self.changes.append(Change(self.rv, kind, entry.name, entry.uid, body))
        self.events.append(obj)
        self.entries.append(entry)
        self._overlay[entry.name] = None if kind == "DELETED" else entry
        return entry

    def insert_copy(self, obj: KubeObject) -> tuple[Entry, KubeObject]:
        """Store a new object (ADDED) without taking ``obj``: the event gets its own copy,
        decoded from the stored JSON (one encoding, one decoding: the cheapest deep copy
        that also proves the value is plain JSON). Returns the entry and that copy, which
        stays the event's: build a next state from a shallow copy of it, never change it."""
        entry = self._stamp(obj, "ADDED", check_size=True, detach=True)
        return entry, self.events[-1]

    def replace(self, new: KubeObject, *, check_size: bool = False) -> KubeObject:
        """Store a new state of an existing object (MODIFIED). ``new`` becomes the event's:
        the caller must not change it afterwards; it gets a copy back."""
        return self._stamp(new, "MODIFIED", check_size=check_size).object()

    def remove(self, obj: KubeObject) -> None:
        """Delete; the DELETED event carries the last state with the deletion's new rv."""
        last = {**obj, "metadata": {**obj["metadata"]}}
        self._stamp(last, "DELETED", check_size=False)

    def savepoint(self) -> tuple[int, int, dict[str, Entry | None]]:
        return self.rv, len(self.changes), dict(self._overlay)

    def rollback(self, mark: tuple[int, int, dict[str, Entry | None]]) -> None:
        self.rv, count, self._overlay = mark
        del self.changes[count:]
        del self.events[count:]
        del self.entries[count:]


def entries_of(rows: Iterable[tuple[str, int, str]]) -> Iterable[Entry]:
    for _, rv, body in rows:
        yield Entry.decode(body, rv)[0]


__all__ = ["Entry", "Index", "Tx", "entries_of"]
