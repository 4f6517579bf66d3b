"""The result store: one SQLite row per run, written in one transaction at the end of a run.

A run killed half-way therefore leaves no row; its files become ``runs/<id>/`` only after
its row is stored (``run.folders``). ``PRAGMA user_version`` holds the schema version.

Several processes may run grids on one store: a process takes a run with :meth:`claim`
(one ``BEGIN IMMEDIATE`` transaction: no other process can claim in between), which is
refused while another live process holds it or when another process finished it during
this grid; the claim is marked finished with the run's row (:meth:`put`) and dropped by
:meth:`release` when a run ends without one. A dead process's claim expires
(``store.claims``). The ``claims`` table sits beside ``runs``, whose schema is unchanged.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import BenchmarkError
from .claims import Owner, alive

SCHEMA_VERSION = 1
#: ``health`` (``run.health``) is NULL in rows stored before it existed
JSON_FIELDS = ("spec", "protocol", "metrics", "efficiency", "provenance", "health")
COLUMNS = ("run_id", "method", "dataset", "regime", "backbone", "bits", "seed", "status",
           "error", "distribution", "version", "wall_time") + JSON_FIELDS
BUSY_TIMEOUT_S = 120  # how long a write waits for another process's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    dataset TEXT NOT NULL,
    regime TEXT NOT NULL,
    backbone TEXT NOT NULL,
    bits INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    distribution TEXT,
    version TEXT,
    wall_time REAL,
    spec TEXT NOT NULL,
    protocol TEXT NOT NULL,
    metrics TEXT NOT NULL,
    efficiency TEXT NOT NULL,
    provenance TEXT NOT NULL,
    health TEXT
)"""
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    finished_at REAL
)"""


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.me = Owner.me()
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            problem = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
            if version not in (0, SCHEMA_VERSION):
                raise BenchmarkError(f"{self.path}: result store schema {version}, this version "
                                     f"reads {SCHEMA_VERSION}")
            with self.transaction():
                self.db.execute(_SCHEMA)
                if "health" not in {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}:
                    self.db.execute("ALTER TABLE runs ADD COLUMN health TEXT")  # older stores
                self.db.execute(_CLAIMS)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise BenchmarkError(f"{self.path}: not a readable result store "
                                 f"(sqlite3: {exc})") from None
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self):
        """One write transaction that holds the store's write lock from its start."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def status(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row["status"] if row else None

    def put(self, record: dict) -> None:
        """Store the run's row and mark this process's claim on it finished, atomically."""
        values = [json.dumps(record.get(c), sort_keys=True) if c in JSON_FIELDS else record.get(c)
                  for c in COLUMNS]
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(COLUMNS))})", values)
            db.execute("UPDATE claims SET finished_at = ? WHERE run_id = ? AND host = ? AND "
                       "pid = ?", (time.time(), record["run_id"], self.me.host, self.me.pid))

    def delete(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def records(self, status: str | None = None) -> list[dict]:
        query = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY run_id"
        rows = self.db.execute(query, (status,) if status else ()).fetchall()
        return [{k: (json.loads(row[k]) if k in JSON_FIELDS and row[k] is not None else row[k])
                 for k in row.keys()} for row in rows]

    # -- claims: one results folder, several processes ----------------------------------
    def _claim_row(self, run_id: str):
        row = self.db.execute("SELECT * FROM claims WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None, None
        return row, Owner(row["host"], row["pid"], row["started"])

    def claim(self, run_id: str, wanted, since: float) -> str | None:
        """Take ``run_id`` for this process; None when taken, else why not: another live
        process holds it, another process finished it after ``since`` (this grid's start),
        or ``wanted(status)`` (the overwrite rule, on the stored status) is false."""
        with self.transaction() as db:
            row, owner = self._claim_row(run_id)
            if owner is not None and owner != self.me:
                if row["finished_at"] is None and alive(owner, row["claimed_at"]):
                    return f"being run by {owner.describe()}"
                if row["finished_at"] is not None and row["finished_at"] >= since:
                    return f"run by {owner.describe()} during this grid"
            if not wanted(self.status(run_id)):
                return "already recorded"
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, NULL)",
                       (run_id, self.me.host, self.me.pid, self.me.started, time.time()))
        return None

    def release(self, run_id: str) -> None:
        """Drop this process's unfinished claim on ``run_id`` (a run that ends without a row)."""
        with self.transaction() as db:
            db.execute("DELETE FROM claims WHERE run_id = ? AND host = ? AND pid = ? AND "
                       "finished_at IS NULL", (run_id, self.me.host, self.me.pid))

    def others_running(self) -> list[str]:
        """Run ids held by other live processes (unfinished claims)."""
        rows = self.db.execute("SELECT * FROM claims WHERE finished_at IS NULL").fetchall()
        return [r["run_id"] for r in rows
                if Owner(r["host"], r["pid"], r["started"]) != self.me
                and alive(Owner(r["host"], r["pid"], r["started"]), r["claimed_at"])]
