"""The embedded backend: Kubernetes object semantics on SQLite (WAL), no cluster needed.

- Data lives in ``<data_dir>/<namespace>.sqlite3``; ``data_dir=None`` keeps it in memory
  (tests). A restart loses nothing and the resourceVersion counter continues.
- Reads (``get``, ``list``, ``latest``) are answered from an in-memory index of every
  object (``_index.Index``), like a Kubernetes informer's cache: no thread hop, no
  query, and a label-selected list costs its matches, not the store. SQLite is the
  durable log the index is loaded from when the store opens.
- Writes are computed on the trio thread against the index (``_index.Tx``), then written
  to SQLite in one transaction per batch: one thread hop and one commit for every write
  that queued up while the previous batch was being committed (group commit). Each
  write is undone alone if it fails (AlreadyExists, Conflict, a bad argument). A call
  returns once its batch has committed, and only then
  does the index (and so every reader and watcher) see it.
- Several processes may open the same directory. Writes are serialised by SQLite's write
  lock (``BEGIN IMMEDIATE``); each batch commits only if the file's resourceVersion is
  still the one the batch was computed on, so commit order equals resourceVersion order
  and no write is decided on a stale view: otherwise the index first catches up with
  the change log (the ``changes`` table) and the batch is computed again. The index also
  follows other processes' commits by polling the log (``poll_interval``) and when a
  ``get`` misses, so another process's create is visible at once; other changes of
  theirs are seen within ``poll_interval`` (as an informer's cache lags the API server),
  and a write on a stale view fails with Conflict only after catching up.
- ``run_events`` is served from the index's recent changes (``event_memory`` of them,
  shared by every follower); a follower further behind reads the change log. The log
  keeps the last ``change_retention`` changes; resuming from an older resourceVersion
  raises Gone, as a compacted etcd does. Event objects are shared between followers:
  read-only.
- Cascade deletion is done synchronously inside the delete's transaction (see
  ``_embedded_ops.delete`` for the event order).
- create, update_status and patch_annotations refuse an object whose JSON is over
  ``_meta.MAX_OBJECT_BYTES`` with TooLarge, as etcd behind an API server would.
- Finalizers other than the GC's own are stored but never block deletion: nothing in the
  Store interface could remove them.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import trio

from actions.kube_names import is_dns_label
from actions.store import _embedded_ops as ops
from actions.store import _meta, _sqlite
from actions.store._index import Entry, Index, Tx, entries_of
from actions.store._roots import take_page
from actions.store._sqlite import Connection, Synchronous
from actions.store.base import (
    EventType,
    KubeObject,
    PropagationPolicy,
    RootCursor,
    RootPage,
    WatchEvent,
)
from actions.store.errors import Gone, Invalid, NotFound, StoreUnavailable

_BATCH = 256  # changes read from the log, or handed to a follower, at a time
_CHECKPOINT_EVERY = 1000  # changes written between two background WAL checkpoints
log = logging.getLogger(__name__)
T = TypeVar("T")
_Events = list[tuple[int, WatchEvent]]  # (rv, event), consecutive


def _open_files(
    path: Path, synchronous: Synchronous
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """The writer and reader connections of a store file, its schema created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _sqlite.connect(path, synchronous)
    try:
        _sqlite.init_schema(writer)
        reader = _sqlite.connect(path, synchronous)
    except BaseException:
        writer.close()
        raise
    return writer, reader


@dataclass(eq=False, slots=True)
class _WriteOp:
    """One store write waiting for (or done by) a group commit."""

    fn: Callable[[Tx], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class EmbeddedStore:
    """A ``Store`` on SQLite. Create it with ``await EmbeddedStore.open(...)``."""

    def __init__(
        self,
        *,
        namespace: str,
        writer: Connection,
        reader: Connection,
        path: Path | None,
        poll_interval: float,
        change_retention: int,
        event_memory: int = 4096,
    ) -> None:
        self.namespace = namespace
        self.path = path
        self._writer = writer
        self._reader = reader
        self._poll_interval = poll_interval
        self._retention = change_retention
        self._index = Index()
        self._compacted = 0  # the log holds no change at or below this
        # The newest changes as (rv, event), consecutive: what followers read.
        self._recent: deque[tuple[int, WatchEvent]] = deque(maxlen=event_memory)
        # Replaced after every change of the index; followers wait on the one they saw
        # before looking, so a change in between is never slept through.
        self._changed = trio.Event()
        self._closed = False
        self._pending: list[_WriteOp] = []
        self._write_lock = trio.Lock()
        self._sync_lock = trio.Lock()
        # Until then the index is taken to hold every commit of other processes too.
        self._fresh_until = -math.inf
        self._unchecked = 0  # changes written since the last checkpoint began
        self._checkpointing = False

    @classmethod
    async def open(
        cls,
        data_dir: Path | None,
        namespace: str = "flyte",
        *,
        poll_interval: float = 0.05,
        change_retention: int = 100_000,
        synchronous: Synchronous = "NORMAL",
        event_memory: int = 4096,
    ) -> EmbeddedStore:
        """Open (creating if needed) the store for ``namespace`` in ``data_dir``.

        ``poll_interval`` bounds how late a write made by another process reaches this
        process's index and ``run_events``. ``change_retention`` is how many changes the
        log keeps for resuming; ``event_memory`` how many of them are also kept in
        memory for followers. ``synchronous="NORMAL"`` (the default) commits to the WAL
        without an fsync: a write that was answered survives the process being killed
        (``kill -9``, a crash), and the WAL is fsynced by background checkpoints; a power
        loss can take the last commits since then. ``"FULL"`` fsyncs every commit (one
        per group commit), surviving power loss too, at the cost of a disk flush in
        every write's latency.
        """
        if not is_dns_label(namespace):
            raise Invalid(f"namespace {namespace!r} is not a DNS-1123 label")
        if change_retention < 1 or event_memory < 1:
            raise ValueError("change_retention and event_memory must be at least 1")
        path: Path | None = None
        if data_dir is None:
            conn = _sqlite.connect(None, synchronous)
            _sqlite.init_schema(conn)
            writer = reader = Connection(conn, "memory")
        else:
            path = Path(data_dir) / f"{namespace}.sqlite3"
            # File I/O and possibly a wait for another process's lock: off the trio thread.
            write_conn, read_conn = await trio.to_thread.run_sync(_open_files, path, synchronous)
            writer = Connection(write_conn, "writer")
            reader = Connection(read_conn, "reader")
        store = cls(
            namespace=namespace,
            writer=writer,
            reader=reader,
            path=path,
            poll_interval=poll_interval,
            change_retention=change_retention,
            event_memory=event_memory,
        )
        try:
            await store._reload()
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.aclose()
            raise
        return store

    # -- the index ----------------------------------------------------------------------

    async def _reload(self) -> None:
        """Load every object: at open, and when the log no longer reaches back to the
        index (another process wrote more than ``change_retention`` changes meanwhile)."""
        started = trio.current_time()
        rv, compacted, rows = await self._reader.run(_sqlite.load_all)
        self._index.reset(rv, entries_of(rows))
        self._compacted = compacted
        self._recent.clear()
        self._fresh_until = started + self._poll_interval
        self._wake_followers()

    def _wake_followers(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _record(self, rv: int, kind: EventType, entry: Entry, obj: KubeObject) -> None:
        if rv <= self._index.rv:
            return  # already applied (a catch-up read our own commit from the log)
        self._index.apply(rv, kind, entry.name, entry)
        self._recent.append((rv, WatchEvent(kind, obj)))

    async def _fresh(self) -> None:
        """Catch up with other processes' commits if the index may lag them by more than
        ``poll_interval``. A memory-only store has no other writers."""
        if self.path is None or trio.current_time() < self._fresh_until:
            return
        await self._catch_up()

    async def _catch_up(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store was closed")
        async with self._sync_lock:
            started = trio.current_time()
            if started < self._fresh_until:
                return  # someone caught up while we waited for the lock
            while True:
                try:
                    compacted, rows = await self._reader.run(
                        partial(_read_log, after=self._index.rv)
                    )
                except Gone:
                    await self._reload()
                    return
                self._compacted = max(self._compacted, compacted)
                for rv, kind, body in rows:
                    entry, obj = Entry.decode(body, rv)
                    self._record(rv, kind, entry, obj)  # type: ignore[arg-type]
                if rows:
                    self._wake_followers()
                if len(rows) < _BATCH:
                    break
            self._fresh_until = started + self._poll_interval

    # -- writes -----------------------------------------------------------------------

    async def _write(self, fn: Callable[[Tx], T]) -> T:
        """Group commit: writes that arrive while a batch is being committed are applied
        together in the next one, in arrival order (one fsync for all of them)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        op = _WriteOp(fn)
        self._pending.append(op)
        try:
            async with self._write_lock:
                if not op.done:
                    await self._commit_pending()
        except BaseException:
            if not op.done and op in self._pending:
                self._pending.remove(op)  # cancelled before it ran: it never will
            raise
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def _compute(self, batch: list[_WriteOp]) -> tuple[Tx, list[tuple[Any, BaseException | None]]]:
        """Run the batch's writes against the index (nothing is stored yet)."""
        tx = Tx(self._index)
        outcomes: list[tuple[Any, BaseException | None]] = []
        for op in batch:
            mark = tx.savepoint()
            try:
                outcomes.append((op.fn(tx), None))
            except Exception as exc:
                tx.rollback(mark)
                outcomes.append((None, exc))
        return tx, outcomes

    async def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        try:
            while True:
                tx, outcomes = self._compute(batch)
                if not tx.changes:
                    break
                started = trio.current_time()
                try:
                    self._compacted = await self._writer.run(
                        partial(
                            _append,
                            base_rv=tx.base_rv,
                            changes=tx.changes,
                            retention=self._retention,
                        )
                    )
                except _sqlite.Stale:
                    # Another process committed since the index last looked: catch up
                    # and decide every write of the batch again on the fresh state.
                    self._fresh_until = -math.inf
                    await self._catch_up()
                    continue
                except Exception as exc:
                    # Nothing of the batch was stored: every write in it failed.
                    outcomes = [(None, exc)] * len(batch)
                    break
                for change, entry, obj in zip(tx.changes, tx.entries, tx.events, strict=True):
                    self._record(change.rv, change.type, entry, obj)
                self._fresh_until = started + self._poll_interval
                self._wake_followers()
                self._unchecked += len(tx.changes)
                if self._unchecked >= _CHECKPOINT_EVERY and self.path is not None:
                    self._start_checkpoint()
                break
        except BaseException:
            # Cancelled before the batch reached SQLite (or while catching up): nothing
            # was stored, so hand the writes back to be done by their own callers.
            self._pending[:0] = batch
            raise
        for op, (result, error) in zip(batch, outcomes, strict=True):
            op.result, op.error, op.done = result, error, True

    def _start_checkpoint(self) -> None:
        """Checkpoint the WAL in the background, on the reader's thread, so that no
        caller waits for its fsync (the WAL itself survives a crash of this process)."""
        if self._checkpointing:
            return
        self._checkpointing = True
        self._unchecked = 0
        trio.lowlevel.spawn_system_task(self._checkpoint)

    async def _checkpoint(self) -> None:
        try:
            if not self._closed:
                await self._reader.run(_sqlite.checkpoint)
        except Exception as exc:  # the next checkpoint tries again; the WAL is intact
            log.warning("embedded store: WAL checkpoint failed: %s", exc)
        finally:
            self._checkpointing = False

    async def create(self, obj: KubeObject) -> KubeObject:
        namespace = self.namespace
        return await self._write(lambda tx: ops.create(tx, obj, namespace))

    async def create_with_status(self, obj: KubeObject, status: dict[str, Any]) -> KubeObject:
        """``create`` and ``update_status`` in one transaction (ADDED, then MODIFIED)."""
        namespace = self.namespace
        return await self._write(lambda tx: ops.create_with_status(tx, obj, status, namespace))

    async def update_status(self, obj: KubeObject) -> KubeObject:
        namespace = self.namespace
        return await self._write(lambda tx: ops.update_status(tx, obj, namespace))

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject:
        return await self._write(lambda tx: ops.patch_annotations(tx, name, annotations))

    async def delete(self, name: str, propagation: PropagationPolicy = "Background") -> None:
        await self._write(lambda tx: ops.delete(tx, name, propagation))

    # -- reads ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")

    async def get(self, name: str) -> KubeObject:
        self._check_open()
        await self._fresh()
        entry = self._index.get(name)
        if entry is None and self.path is not None:
            # Perhaps just created by another process: make sure before saying no.
            self._fresh_until = -math.inf
            await self._catch_up()
            entry = self._index.get(name)
        if entry is None or _meta.is_trace_entry(entry.body):
            # A TraceAction shares the name space but is not a TaskAction, as on a cluster.
            raise NotFound(_meta.not_found_message(name))
        return entry.object()

    async def latest(self, name: str) -> KubeObject | None:
        self._check_open()
        await self._fresh()
        await trio.lowlevel.checkpoint()  # callers poll it in loops
        entry = self._index.get(name)
        return None if entry is None else entry.object()

    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]:
        _meta.validate_labels(labels)
        self._check_open()
        await self._fresh()
        index = self._index
        return [entry.object() for entry in index.select(labels)], str(index.rv)

    async def list_roots(
        self, labels: dict[str, str], *, limit: int, before: RootCursor | None = None
    ) -> RootPage:
        _meta.validate_labels(labels)
        self._check_open()
        await self._fresh()
        objects = self._index.objects

        def matches(name: str) -> bool:
            entry_labels = objects[name].labels
            return all(entry_labels.get(k) == v for k, v in labels.items())

        names, cursor = take_page(self._index.roots, before, max(limit, 1), matches)
        return [objects[name].object() for name in names], cursor

    async def current_resource_version(self) -> str:
        """The store's resourceVersion now (what a list would return)."""
        self._check_open()
        await self._fresh()
        return str(self._index.rv)

    # -- change stream ----------------------------------------------------------------

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        since: str | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        cursor = await self._start_cursor(since)
        task_status.started()
        poll = self._poll_interval if self.path is not None else math.inf
        while True:
            if self._closed:
                raise StoreUnavailable("the store was closed")
            changed = self._changed  # before looking: see __init__
            if cursor < self._index.rv:
                for rv, event in await self._events_after(cursor):
                    await send.send(event)
                    cursor = rv
                continue
            # Memory-only stores have no other writers, so they never need to poll.
            with trio.move_on_after(poll):
                await changed.wait()
            await self._fresh()

    async def _events_after(self, cursor: int) -> _Events:
        """The next changes after ``cursor`` (up to the index's), from memory if it still
        holds them, else from the log. Gone once the log no longer has them."""
        if cursor < self._compacted:
            raise Gone(f"too old resource version: {cursor} ({self._compacted})")
        recent = self._recent
        if recent and recent[0][0] <= cursor + 1:
            start = cursor + 1 - recent[0][0]
            newer = len(recent) - start
            if newer <= _BATCH:
                # From the right end: a follower is usually a few changes behind, and
                # walking the deque from the left would cost its whole length each time.
                tail = list(islice(reversed(recent), newer))
                tail.reverse()
                return tail
            return list(islice(recent, start, start + _BATCH))
        last = self._index.rv
        _, rows = await self._reader.run(partial(_read_log, after=cursor))
        return [
            (rv, WatchEvent(kind, _meta.loads(body)))  # type: ignore[arg-type]
            for rv, kind, body in rows
            if rv <= last
        ]

    async def _start_cursor(self, since: str | None) -> int:
        self._check_open()
        await self._fresh()
        if since is None:
            return self._index.rv
        if not since.isdigit():
            raise Invalid(f"resourceVersion: Invalid value: {since!r}")
        cursor = int(since)
        if cursor > self._index.rv and self.path is not None:
            self._fresh_until = -math.inf
            await self._catch_up()
        current, compacted = self._index.rv, self._compacted
        if cursor < compacted:
            raise Gone(f"too old resource version: {cursor} ({compacted})")
        if cursor > current:
            # Newer than anything this store wrote (e.g. a wiped data directory): the
            # caller's state cannot be trusted, so make it re-list.
            raise Gone(f"too large resource version: {cursor}, current: {current}")
        return cursor

    def ready(self) -> tuple[bool, str]:
        """Always ready while open (the database is local)."""
        return (False, "store closed") if self._closed else (True, "ok")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._changed.set()  # followers waiting for changes notice the close at once
        await self._writer.aclose()
        if self._reader is not self._writer:
            await self._reader.aclose()


def _read_log(conn: sqlite3.Connection, *, after: int) -> tuple[int, list[tuple[int, str, str]]]:
    """(compacted, up to ``_BATCH`` changes after ``after``); Gone if compacted past it."""
    return _sqlite.read_log(conn, after, _BATCH)


def _append(
    conn: sqlite3.Connection, *, base_rv: int, changes: list[_sqlite.Change], retention: int
) -> int:
    return _sqlite.append(conn, base_rv, changes, retention)
