"""SQLite plumbing for the embedded store: connections, schema, and the write transaction.

Thread model: a ``sqlite3.Connection`` is used by one thread at a time. Each connection
has its own OS thread (``_thread.WorkerThread``) and is only ever touched there, so calls
on it are serialised, in the order made, and never run on the trio thread. A file-backed
store has two connections: the writer (SQLite
admits one writer anyway; serialising in-process avoids busy-waiting on our own lock) and a
reader (WAL lets it read a consistent snapshot while the writer commits/fsyncs). A
memory-only store has a single connection for both roles, because a private ``:memory:``
database cannot be opened twice.

Everything below ``Connection`` is synchronous and runs in those threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from actions.store._thread import WorkerThread
from actions.store.base import EventType
from actions.store.errors import Gone, StoreUnavailable

T = TypeVar("T")
Synchronous = Literal["NORMAL", "FULL"]

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', {schema}), ('rv', 0), ('compacted', 0);

-- The objects, each as the JSON the API server would return: what a store loads into
-- its in-memory index when it opens (labels and owners are indexed there).
CREATE TABLE IF NOT EXISTS objects {objects};

-- The change log: one row per resourceVersion, in apply order. Followers (the index of
-- every other process on the same file, and resuming watchers) read it; compaction drops
-- a prefix and records its end in meta.compacted.
CREATE TABLE IF NOT EXISTS changes (
    rv   INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    body TEXT NOT NULL
);
"""

# A rowid table with a unique name, rewritten in place by an upsert. (Version 2 had a
# WITHOUT ROWID table keyed by name: an object's JSON, 1-3 KB, is far over what such a
# table stores well, SQLite's documentation suggesting rows under about a twentieth of a
# page; each row spilled into overflow pages and every write rewrote them: 23.5 KiB of
# WAL per one-object commit against 16.2, bench/sqlite_objects.py.)
_OBJECTS = """(
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uid  TEXT NOT NULL,
    rv   INTEGER NOT NULL,
    body TEXT NOT NULL
)"""

_UPSERT_OBJECT = (
    "INSERT INTO objects (name, uid, rv, body) VALUES (?, ?, ?, ?) ON CONFLICT (name) "
    "DO UPDATE SET uid = excluded.uid, rv = excluded.rv, body = excluded.body"
)

# Each step from version N to N + 1, run in one transaction that re-reads the version
# first (two processes may open an old file at once; the second finds it done).
_MIGRATIONS: dict[int, list[str]] = {
    # Version 1 also kept label and ownerReference index tables; the index lives in
    # memory now.
    1: ["DROP TABLE IF EXISTS labels", "DROP TABLE IF EXISTS owners"],
    # Version 2's objects table: see _OBJECTS.
    2: [
        f"CREATE TABLE objects_v3 {_OBJECTS}",
        "INSERT INTO objects_v3 (name, uid, rv, body) SELECT name, uid, rv, body FROM objects",
        "DROP TABLE objects",
        "ALTER TABLE objects_v3 RENAME TO objects",
    ],
}


class Connection:
    """One sqlite3 connection and the thread that alone uses it. Created inside trio.run."""

    def __init__(self, conn: sqlite3.Connection, role: str) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._thread = WorkerThread(f"sqlite {role}")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # A call that started is waited for even if the caller is cancelled (WorkerThread),
        # so the caller never loses track of whether a write committed.
        if self._thread.stopped:
            raise StoreUnavailable("the store is closed")
        return await self._thread.run(partial(self._call, fn))

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreUnavailable("the store is closed")
        try:
            return fn(self._conn)
        except sqlite3.OperationalError as exc:
            # Locked past busy_timeout, disk full, I/O error: retryable for the caller.
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    async def aclose(self) -> None:
        try:
            await self._thread.run(self._close)
        finally:
            await self._thread.stop()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def connect(path: Path | None, synchronous: Synchronous) -> sqlite3.Connection:
    """Open a connection in autocommit mode (we issue BEGIN/COMMIT ourselves)."""
    conn = sqlite3.connect(
        ":memory:" if path is None else str(path),
        isolation_level=None,
        check_same_thread=False,  # thread confinement is the limiter's job
    )
    # Other processes may hold the write lock briefly; wait instead of failing at once.
    conn.execute("PRAGMA busy_timeout = 10000")
    if path is not None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Checkpoints (copying the WAL into the database, with an fsync) are run by the
        # store in the background (``checkpoint``), never inside a commit it waits for.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, as far as readers allow; never
    waits for (or blocks) a writer."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def init_schema(conn: sqlite3.Connection) -> None:
    # IMMEDIATE: two processes opening a fresh directory at once must not both create it.
    # (executescript would commit an open transaction first, so BEGIN goes inside it.)
    # A file from a newer version is refused before anything is created in it.
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreUnavailable(f"unsupported store schema version {row[0]}")
    try:
        schema = _SCHEMA.format(schema=SCHEMA_VERSION, objects=_OBJECTS)
        conn.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
        for version, statements in sorted(_MIGRATIONS.items()):
            if meta_value(conn, "schema") != version:
                continue
            conn.execute("BEGIN IMMEDIATE")
            if meta_value(conn, "schema") == version:  # not done by another process
                for statement in statements:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version + 1,))
            conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    version = meta_value(conn, "schema")
    if version != SCHEMA_VERSION:
        raise StoreUnavailable(f"unsupported store schema version {version}")


@dataclass(frozen=True, slots=True)
class Change:
    """One write as the log records it: the object after it (for DELETED, its last
    state), stamped with ``rv``, as compact JSON."""

    rv: int
    type: EventType
    name: str
    uid: str
    body: str


class Stale(Exception):
    """Another process wrote since the caller last looked: its view is out of date."""


def append(conn: sqlite3.Connection, base_rv: int, changes: list[Change], retention: int) -> int:
    """Write ``changes`` (resourceVersions ``base_rv + 1 ...``) in ONE transaction: one
    fsync for all of them (group commit). Raises Stale, writing nothing, when the file's
    resourceVersion is no longer ``base_rv`` (another process committed meanwhile).
    Returns the end of the log's compacted prefix."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        if meta_value(conn, "rv") != base_rv:
            raise Stale
        conn.executemany(
            "INSERT INTO changes (rv, type, body) VALUES (?, ?, ?)",
            [(c.rv, c.type, c.body) for c in changes],
        )
        # The objects table needs each name's last state only (a create with its status is
        # two changes, one row).
        last = {c.name: c for c in changes}
        gone = [(c.name,) for c in last.values() if c.type == "DELETED"]
        kept = [(c.name, c.uid, c.rv, c.body) for c in last.values() if c.type != "DELETED"]
        if gone:
            conn.executemany("DELETE FROM objects WHERE name = ?", gone)
        if kept:
            conn.executemany(_UPSERT_OBJECT, kept)
        rv = changes[-1].rv
        conn.execute("UPDATE meta SET value = ? WHERE key = 'rv'", (rv,))
        compacted = meta_value(conn, "compacted")
        # Compact in batches (retention/8 slack) so the delete is amortised over writes.
        if rv - compacted > retention + retention // 8 + 1:
            compacted = rv - retention
            conn.execute("DELETE FROM changes WHERE rv <= ?", (compacted,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'compacted'", (compacted,))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return compacted


def read(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in one read transaction: a consistent snapshot across its statements."""
    conn.execute("BEGIN")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _rollback(conn: sqlite3.Connection) -> None:
    # Also after a failed COMMIT: a transaction left open would break every later BEGIN.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def meta_value(conn: sqlite3.Connection, key: str) -> int:
    (value,) = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(value)


def load_all(conn: sqlite3.Connection) -> tuple[int, int, list[tuple[str, int, str]]]:
    """(resourceVersion, compacted, every object as (name, rv, body)), in one snapshot."""

    def _all(c: sqlite3.Connection) -> tuple[int, int, list[tuple[str, int, str]]]:
        rows = c.execute("SELECT name, rv, body FROM objects").fetchall()
        return meta_value(c, "rv"), meta_value(c, "compacted"), rows

    return read(conn, _all)


def read_log(
    conn: sqlite3.Connection, after: int, limit: int
) -> tuple[int, list[tuple[int, str, str]]]:
    """(compacted, changes with rv > ``after`` oldest first, at most ``limit``). Gone if
    some of them were compacted."""

    def _read(c: sqlite3.Connection) -> tuple[int, list[tuple[int, str, str]]]:
        compacted = meta_value(c, "compacted")
        if after < compacted:
            raise Gone(f"too old resource version: {after} ({compacted})")
        rows = c.execute(
            "SELECT rv, type, body FROM changes WHERE rv > ? ORDER BY rv LIMIT ?", (after, limit)
        ).fetchall()
        return compacted, rows

    return read(conn, _read)
