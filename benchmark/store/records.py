"""``records.jsonl``: the diff-friendly export of the store that every committed
leaderboard file is generated from.

One JSON object a line, sorted by run id, keys sorted, floats rounded to ``FLOAT_DIGITS``
significant digits, time-varying fields (``VOLATILE_FIELDS``) dropped; only ok records.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import BenchmarkError

FLOAT_DIGITS = 6
VOLATILE_FIELDS = ("wall_time",)
RECORDS_FILE = "records.jsonl"


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.{FLOAT_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def stable_record(record: dict) -> dict:
    """The record as exported: volatile fields dropped, floats rounded."""
    return _rounded({k: v for k, v in record.items() if k not in VOLATILE_FIELDS})


def dumps_records(records: list[dict]) -> str:
    """JSON lines of the ok records, sorted by run id."""
    ok = sorted((stable_record(r) for r in records if r.get("status") == "ok"),
                key=lambda r: r["run_id"])
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in ok)


def loads_records(text: str, source: str = RECORDS_FILE) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{source} line {number}: not JSON ({exc.msg})") from None
        missing = [k for k in ("run_id", "method", "dataset", "bits", "seed", "spec", "metrics")
                   if k not in record] if isinstance(record, dict) else ["(not an object)"]
        if missing:
            raise BenchmarkError(f"{source} line {number}: missing {', '.join(missing)}")
        records.append(record)
    return records


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"no records file at {path}")
    return loads_records(path.read_text(encoding="utf-8"), str(path))


def normalised(records: list[dict]) -> list[dict]:
    """The records exactly as ``records.jsonl`` will give them back."""
    return loads_records(dumps_records(records))
