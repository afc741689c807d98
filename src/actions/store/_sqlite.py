"""SQLite plumbing for the embedded store: connections, schema, and the write transaction.

Thread model: a ``sqlite3.Connection`` is used by one thread at a time. Each connection is
paired with its own ``trio.CapacityLimiter(1)`` and only ever touched inside
``trio.to_thread.run_sync(..., limiter=that_limiter)``, so calls on it are serialised and
never run on the trio thread. A file-backed store has two connections: the writer (SQLite
admits one writer anyway; serialising in-process avoids busy-waiting on our own lock) and a
reader (WAL lets it read a consistent snapshot while the writer commits/fsyncs). A
memory-only store has a single connection for both roles, because a private ``:memory:``
database cannot be opened twice.

Everything below ``Connection`` is synchronous and runs in those worker threads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from actions.store._meta import dumps
from actions.store.base import EventType, KubeObject
from actions.store.errors import Gone, StoreUnavailable

T = TypeVar("T")
Synchronous = Literal["NORMAL", "FULL"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', {schema}), ('rv', 0), ('compacted', 0);

-- The objects, each as the JSON the API server would return.
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY,
    uid  TEXT NOT NULL,
    rv   INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;

-- Label index: a label-selected list is a range scan on (key, value), never a table scan.
CREATE TABLE IF NOT EXISTS labels (
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    name  TEXT NOT NULL,
    PRIMARY KEY (key, value, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_by_name ON labels (name);

-- ownerReference index: the cascade finds an owner's dependents without a scan.
CREATE TABLE IF NOT EXISTS owners (
    owner     TEXT NOT NULL,
    owner_uid TEXT NOT NULL,
    dependent TEXT NOT NULL,
    PRIMARY KEY (owner, dependent)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owners_by_dependent ON owners (dependent);

-- The change log: one row per resourceVersion, in apply order. Followers (run_events in
-- this and other processes) read it; compaction drops a prefix and records its end in
-- meta.compacted.
CREATE TABLE IF NOT EXISTS changes (
    rv   INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class Connection:
    """One sqlite3 connection plus the limiter that confines it to one thread at a time."""

    def __init__(self, conn: sqlite3.Connection, limiter: trio.CapacityLimiter) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._limiter = limiter

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # abandon_on_cancel=False (the default): a write that started is waited for, so the
        # caller never loses track of whether it committed, and the limiter is only freed
        # once the thread is really done with the connection.
        return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreUnavailable("the store is closed")
        try:
            return fn(self._conn)
        except sqlite3.OperationalError as exc:
            # Locked past busy_timeout, disk full, I/O error: retryable for the caller.
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close, limiter=self._limiter)

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
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    # IMMEDIATE: two processes opening a fresh directory at once must not both create it.
    # (executescript would commit an open transaction first, so BEGIN goes inside it.)
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA.format(schema=SCHEMA_VERSION)}\nCOMMIT;")
    except BaseException:
        _rollback(conn)
        raise
    version = meta_value(conn, "schema")
    if version != SCHEMA_VERSION:
        raise StoreUnavailable(f"unsupported store schema version {version}")


@dataclass(eq=False, slots=True)
class WriteOp:
    """One store write waiting for (or done by) a group commit."""

    fn: Callable[[Tx], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


def write_batch(conn: sqlite3.Connection, retention: int, ops: list[WriteOp]) -> bool:
    """Apply ``ops`` in order in ONE transaction (one fsync for all: group commit), each
    inside its own savepoint so that one failing op (AlreadyExists, Conflict, a bad
    argument) is undone alone. Returns whether anything was written; every op ends
    ``done`` with its result or error, also when the whole transaction fails."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        tx = Tx(conn)
        for op in ops:
            conn.execute("SAVEPOINT op")
            rv_before = tx.rv
            try:
                op.result = op.fn(tx)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                tx.rv = rv_before
                op.error = _store_error(exc)
            conn.execute("RELEASE op")
        wrote = tx.finish(retention)
        conn.execute("COMMIT")
    except BaseException as exc:
        _rollback(conn)
        for op in ops:  # nothing of this transaction is left: every op failed
            op.result, op.error = None, _store_error(exc)
        raise
    finally:
        for op in ops:
            op.done = True
    return wrote


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"sqlite: {exc}")
    return exc


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


def load(conn: sqlite3.Connection, name: str) -> KubeObject | None:
    row = conn.execute("SELECT body FROM objects WHERE name = ?", (name,)).fetchone()
    return None if row is None else json.loads(row[0])


def list_query(labels: dict[str, str]) -> tuple[str, list[str]]:
    """SQL for a label-selected list: one index range per requirement, intersected, so
    the cost follows the matches and not the table (EXPLAIN QUERY PLAN is tested)."""
    if not labels:
        return "SELECT body FROM objects ORDER BY name", []
    sub = " INTERSECT ".join(["SELECT name FROM labels WHERE key = ? AND value = ?"] * len(labels))
    params = [part for item in sorted(labels.items()) for part in item]
    return f"SELECT body FROM objects WHERE name IN ({sub}) ORDER BY name", params


def select_by_labels(conn: sqlite3.Connection, labels: dict[str, str]) -> list[KubeObject]:
    sql, params = list_query(labels)
    return [json.loads(body) for (body,) in conn.execute(sql, params).fetchall()]


def read_changes(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, str, str]]:
    """Changes with rv > ``after``, oldest first. Gone if some of them were compacted."""
    compacted = meta_value(conn, "compacted")
    if after < compacted:
        raise Gone(f"too old resource version: {after} ({compacted})")
    return conn.execute(
        "SELECT rv, type, body FROM changes WHERE rv > ? ORDER BY rv LIMIT ?", (after, limit)
    ).fetchall()


def _labels_of(obj: KubeObject) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def _owner_refs_of(obj: KubeObject) -> list[tuple[str, str]]:
    return [(ref["name"], ref["uid"]) for ref in obj["metadata"].get("ownerReferences") or []]


class Tx:
    """Primitive writes inside one transaction; each write takes the next resourceVersion
    and appends one row to the change log, so the log order is the apply order."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._start_rv = meta_value(conn, "rv")
        self.rv = self._start_rv

    def load(self, name: str) -> KubeObject | None:
        return load(self._conn, name)

    def dependents(self, owner: str, owner_uid: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT dependent FROM owners WHERE owner = ? AND owner_uid = ? ORDER BY dependent",
            (owner, owner_uid),
        ).fetchall()
        return [name for (name,) in rows]

    def _stamp(self, obj: KubeObject, event: EventType) -> str:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        body = dumps(obj)
        self._conn.execute(
            "INSERT INTO changes (rv, type, body) VALUES (?, ?, ?)", (self.rv, event, body)
        )
        return body

    def _index(self, obj: KubeObject) -> None:
        name = obj["metadata"]["name"]
        self._conn.executemany(
            "INSERT INTO labels (key, value, name) VALUES (?, ?, ?)",
            [(key, value, name) for key, value in _labels_of(obj).items()],
        )
        self._conn.executemany(
            "INSERT OR REPLACE INTO owners (owner, owner_uid, dependent) VALUES (?, ?, ?)",
            [(owner, uid, name) for owner, uid in _owner_refs_of(obj)],
        )

    def _unindex(self, name: str) -> None:
        self._conn.execute("DELETE FROM labels WHERE name = ?", (name,))
        self._conn.execute("DELETE FROM owners WHERE dependent = ?", (name,))

    def insert(self, obj: KubeObject) -> KubeObject:
        body = self._stamp(obj, "ADDED")
        meta = obj["metadata"]
        self._conn.execute(
            "INSERT INTO objects (name, uid, rv, body) VALUES (?, ?, ?, ?)",
            (meta["name"], meta["uid"], self.rv, body),
        )
        self._index(obj)
        return obj

    def replace(self, old: KubeObject, new: KubeObject) -> KubeObject:
        body = self._stamp(new, "MODIFIED")
        name = new["metadata"]["name"]
        self._conn.execute(
            "UPDATE objects SET rv = ?, body = ? WHERE name = ?", (self.rv, body, name)
        )
        if _labels_of(old) != _labels_of(new) or _owner_refs_of(old) != _owner_refs_of(new):
            self._unindex(name)
            self._index(new)
        return new

    def remove(self, obj: KubeObject) -> KubeObject:
        """Delete; the DELETED event carries the last state with the deletion's new rv."""
        self._stamp(obj, "DELETED")
        name = obj["metadata"]["name"]
        self._conn.execute("DELETE FROM objects WHERE name = ?", (name,))
        self._unindex(name)
        return obj

    def finish(self, retention: int) -> bool:
        if self.rv == self._start_rv:
            return False
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'rv'", (self.rv,))
        compacted = meta_value(self._conn, "compacted")
        # Compact in batches (retention/8 slack) so the delete is amortised over writes.
        if self.rv - compacted > retention + retention // 8 + 1:
            compacted = self.rv - retention
            self._conn.execute("DELETE FROM changes WHERE rv <= ?", (compacted,))
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'compacted'", (compacted,))
        return True
