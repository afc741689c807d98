"""The embedded backend: Kubernetes object semantics on SQLite (WAL), no cluster needed.

- Data lives in ``<data_dir>/<namespace>.sqlite3``; ``data_dir=None`` keeps it in memory
  (tests). A restart loses nothing and the resourceVersion counter continues.
- Several processes may open the same directory. Writes are serialised by SQLite's write
  lock (``BEGIN IMMEDIATE``) and each takes the next value of one counter, so commit order
  equals resourceVersion order. Every write appends to a ``changes`` table keyed by
  resourceVersion; ``run_events`` follows that table. A local commit wakes local followers
  at once; another process's commits are picked up by a short poll (``poll_interval``).
- Group commit: writes that queue up while a transaction is in flight go into the next
  transaction together (each in its own savepoint, so one failing write does not undo
  the others), so ``synchronous="FULL"`` costs one fsync per batch, not per write.
- The change log keeps the last ``change_retention`` changes; resuming from an older
  resourceVersion raises Gone, as a compacted etcd does.
- Cascade deletion is done synchronously inside the delete's transaction (see
  ``_embedded_ops.delete`` for the event order).
- create, update_status and patch_annotations refuse an object whose JSON is over
  ``_meta.MAX_OBJECT_BYTES`` with TooLarge, as etcd behind an API server would.
- Finalizers other than the GC's own are stored but never block deletion: nothing in the
  Store interface could remove them.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from actions.kube_names import is_dns_label
from actions.store import _embedded_ops as ops
from actions.store import _meta, _sqlite
from actions.store._sqlite import Connection, Synchronous, Tx
from actions.store.base import KubeObject, PropagationPolicy, WatchEvent
from actions.store.errors import Gone, Invalid, NotFound, StoreUnavailable

_BATCH = 256
T = TypeVar("T")


def _read_changes(conn: sqlite3.Connection, *, after: int) -> list[tuple[int, str, str]]:
    return _sqlite.read(conn, lambda c: _sqlite.read_changes(c, after, _BATCH))


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
    ) -> None:
        self.namespace = namespace
        self.path = path
        self._writer = writer
        self._reader = reader
        self._poll_interval = poll_interval
        self._retention = change_retention
        # Replaced after every local commit; followers wait on the one they saw before
        # reading, so a commit between their read and their wait is never slept through.
        self._changed = trio.Event()
        self._closed = False
        self._pending: list[_sqlite.WriteOp] = []
        self._write_lock = trio.Lock()

    @classmethod
    async def open(
        cls,
        data_dir: Path | None,
        namespace: str = "flyte",
        *,
        poll_interval: float = 0.05,
        change_retention: int = 100_000,
        synchronous: Synchronous = "FULL",
    ) -> EmbeddedStore:
        """Open (creating if needed) the store for ``namespace`` in ``data_dir``.

        ``poll_interval`` bounds how late a write made by another process reaches this
        process's ``run_events``. ``change_retention`` is how many changes the log keeps
        for resuming. ``synchronous="FULL"`` fsyncs each commit (survives power loss);
        ``"NORMAL"`` survives process crashes only.
        """
        if not is_dns_label(namespace):
            raise Invalid(f"namespace {namespace!r} is not a DNS-1123 label")
        if change_retention < 1:
            raise ValueError("change_retention must be at least 1")
        path: Path | None = None
        if data_dir is None:
            conn = _sqlite.connect(None, synchronous)
            _sqlite.init_schema(conn)
            writer = reader = Connection(conn, trio.CapacityLimiter(1))
        else:
            path = Path(data_dir) / f"{namespace}.sqlite3"
            # File I/O and possibly a wait for another process's lock: off the trio thread.
            write_conn, read_conn = await trio.to_thread.run_sync(_open_files, path, synchronous)
            writer = Connection(write_conn, trio.CapacityLimiter(1))
            reader = Connection(read_conn, trio.CapacityLimiter(1))
        return cls(
            namespace=namespace,
            writer=writer,
            reader=reader,
            path=path,
            poll_interval=poll_interval,
            change_retention=change_retention,
        )

    # -- writes -----------------------------------------------------------------------

    async def _write(self, fn: Callable[[Tx], T]) -> T:
        """Group commit: writes that arrive while a transaction is in flight are applied
        together in the next one, in arrival order (one fsync for all of them)."""
        op = _sqlite.WriteOp(fn)
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
        return op.result

    async def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        retention = self._retention
        try:
            wrote = await self._writer.run(lambda conn: _sqlite.write_batch(conn, retention, batch))
        except BaseException:
            if not batch[0].done:
                # Cancelled before the thread started: hand the writes back.
                self._pending[:0] = batch
                raise
            wrote = False  # the failure is recorded on every op of the batch
        if wrote:
            # Wake local followers now instead of at their next poll.
            self._changed.set()
            self._changed = trio.Event()

    async def create(self, obj: KubeObject) -> KubeObject:
        namespace = self.namespace
        return await self._write(lambda tx: ops.create(tx, obj, namespace))

    async def update_status(self, obj: KubeObject) -> KubeObject:
        namespace = self.namespace
        return await self._write(lambda tx: ops.update_status(tx, obj, namespace))

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject:
        return await self._write(lambda tx: ops.patch_annotations(tx, name, annotations))

    async def delete(self, name: str, propagation: PropagationPolicy = "Background") -> None:
        await self._write(lambda tx: ops.delete(tx, name, propagation))

    # -- reads ------------------------------------------------------------------------

    async def get(self, name: str) -> KubeObject:
        obj = await self._reader.run(lambda conn: _sqlite.load(conn, name))
        if obj is None:
            raise NotFound(_meta.not_found_message(name))
        return obj

    async def latest(self, name: str) -> KubeObject | None:
        # The database is the freshest state there is (also for other processes' writes).
        return await self._reader.run(lambda conn: _sqlite.load(conn, name))

    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]:
        _meta.validate_labels(labels)

        def _list(conn: sqlite3.Connection) -> tuple[list[KubeObject], str]:
            items = _sqlite.select_by_labels(conn, labels)
            return items, str(_sqlite.meta_value(conn, "rv"))

        return await self._reader.run(lambda conn: _sqlite.read(conn, _list))

    async def current_resource_version(self) -> str:
        """The store's resourceVersion now (what a list would return)."""
        return str(await self._reader.run(lambda conn: _sqlite.meta_value(conn, "rv")))

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
            changed = self._changed  # before the read: see the class comment
            rows = await self._reader.run(partial(_read_changes, after=cursor))
            for rv, event_type, body in rows:
                await send.send(WatchEvent(event_type, json.loads(body)))
                cursor = rv
            if len(rows) < _BATCH:
                # Memory-only stores have no other writers, so they never need to poll.
                with trio.move_on_after(poll):
                    await changed.wait()

    async def _start_cursor(self, since: str | None) -> int:
        def _bounds(conn: sqlite3.Connection) -> tuple[int, int]:
            return _sqlite.meta_value(conn, "rv"), _sqlite.meta_value(conn, "compacted")

        current, compacted = await self._reader.run(lambda conn: _sqlite.read(conn, _bounds))
        if since is None:
            return current
        if not since.isdigit():
            raise Invalid(f"resourceVersion: Invalid value: {since!r}")
        cursor = int(since)
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
