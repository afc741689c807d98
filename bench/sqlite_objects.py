"""The embedded store's one-object commit on two layouts of its ``objects`` table.

Store schema 2 kept objects in a WITHOUT ROWID table keyed by name; schema 3 in a rowid
table with a unique name, updated in place by an upsert. Each round writes the same
commit the store makes for an Update (the change log row, the object's row, the
resourceVersion, with the reads of ``meta`` the store does) for objects of a realistic
size (``--body-bytes``), on a file in WAL mode with ``synchronous = NORMAL``: CPU per
commit, WAL bytes per commit, and the CPU of checkpointing them.

    python bench/sqlite_objects.py --objects 6000 --commits 3000
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

LAYOUTS = {
    "schema 2 (WITHOUT ROWID, INSERT OR REPLACE)": (
        "CREATE TABLE objects (name TEXT PRIMARY KEY, uid TEXT NOT NULL, rv INTEGER NOT NULL,"
        " body TEXT NOT NULL) WITHOUT ROWID",
        "INSERT OR REPLACE INTO objects (name, uid, rv, body) VALUES (?, ?, ?, ?)",
    ),
    "schema 3 (rowid, unique name, upsert)": (
        "CREATE TABLE objects (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL)",
        "INSERT INTO objects (name, uid, rv, body) VALUES (?, ?, ?, ?) ON CONFLICT (name)"
        " DO UPDATE SET uid = excluded.uid, rv = excluded.rv, body = excluded.body",
    ),
}


def measure(path: Path, create: str, write: str, args: argparse.Namespace) -> str:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(create)
    conn.execute("CREATE TABLE changes (rv INTEGER PRIMARY KEY, type TEXT, body TEXT)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID")
    conn.execute("INSERT INTO meta VALUES ('rv', 0), ('compacted', 0)")
    rng = random.Random(1)
    body = json.dumps({"spec": "x" * args.body_bytes})
    names = [f"a{rng.getrandbits(64):016x}" for _ in range(args.objects)]
    rv = 0

    def commit(name: str, kind: str) -> None:
        nonlocal rv
        rv += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()
        conn.execute("INSERT INTO changes VALUES (?, ?, ?)", (rv, kind, body))
        conn.execute(write, (name, "uid", rv, body))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'rv'", (rv,))
        conn.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()
        conn.execute("COMMIT")

    for name in names:
        commit(name, "ADDED")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = Path(f"{path}-wal")
    cpu = time.process_time()
    for _ in range(args.commits):
        commit(rng.choice(names), "MODIFIED")
    cpu = time.process_time() - cpu
    wal_bytes = wal.stat().st_size
    checkpoint = time.process_time()
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    checkpoint = time.process_time() - checkpoint
    conn.close()
    n = args.commits
    return (
        f"{cpu / n * 1e6:8.0f} µs CPU/commit {wal_bytes / n / 1024:8.1f} KiB WAL/commit "
        f"{checkpoint / n * 1e6:6.0f} µs checkpoint/commit"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=6000, help="objects stored first")
    ap.add_argument("--commits", type=int, default=3000, help="one-object commits measured")
    ap.add_argument("--body-bytes", type=int, default=1800, help="size of an object's JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, (create, write)) in enumerate(LAYOUTS.items()):
            result = measure(Path(tmp) / f"layout{index}.sqlite3", create, write, args)
            print(f"{name:45s} {result}")


if __name__ == "__main__":
    main()
