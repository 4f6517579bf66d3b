"""The result store: one SQLite row per run, written in one transaction at the end of a run.

A run killed half-way therefore leaves no row (and its codes file is only renamed into place
after being fully written). ``PRAGMA user_version`` holds the schema version.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
JSON_FIELDS = ("spec", "protocol", "metrics", "efficiency", "provenance")
COLUMNS = ("run_id", "method", "dataset", "regime", "backbone", "bits", "seed", "status",
           "error", "distribution", "version", "wall_time") + JSON_FIELDS

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
    provenance TEXT NOT NULL
)"""


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.row_factory = sqlite3.Row
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            from .errors import BenchmarkError
            raise BenchmarkError(f"{self.path}: result store schema {version}, this version "
                                 f"reads {SCHEMA_VERSION}")
        with self.db:
            self.db.execute(_SCHEMA)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def status(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row["status"] if row else None

    def put(self, record: dict) -> None:
        values = [json.dumps(record[c], sort_keys=True) if c in JSON_FIELDS else record.get(c)
                  for c in COLUMNS]
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(COLUMNS))})", values)

    def records(self, status: str | None = None) -> list[dict]:
        query = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY run_id"
        rows = self.db.execute(query, (status,) if status else ()).fetchall()
        return [{k: (json.loads(row[k]) if k in JSON_FIELDS else row[k]) for k in row.keys()}
                for row in rows]
