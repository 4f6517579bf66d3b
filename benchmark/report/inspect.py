"""``python -m benchmark runs`` (the runs of a results folder as a table) and ``python -m
benchmark show RUN_ID`` (one run's spec, metrics, health, efficiency and the tail of its
log, ``runs/<id>/log.txt``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BenchmarkError
from ..run.log import read_log
from ..store.sqlite import ResultStore
from .failures import rerun_command
from .grouping import HEADLINE, protocol_text
from .markdown import escape, table

LOG_TAIL = 40


def store_records(results: Path) -> list[dict]:
    path = Path(results) / "results.sqlite"
    if not path.is_file():
        raise BenchmarkError(f"no result store at {path}")
    with ResultStore(path) as store:
        return store.records()


def _headline(record: dict) -> str:
    metrics = record.get("metrics") or {}
    key = HEADLINE if HEADLINE in metrics else "map"
    return f"{100 * metrics[key]:.2f}" if key in metrics else "-"


def runs_table(records: list[dict], status: str | None = None, method: str | None = None) -> str:
    """id, method, bits, seed, protocol, status, headline (tie-aware mAP %), wall time."""
    chosen = [r for r in records if (status is None or r["status"] == status)
              and (method is None or r["method"] == method)]
    chosen.sort(key=lambda r: (r["method"], protocol_text(r), r["bits"], r["seed"], r["run_id"]))
    rows = [[r["run_id"], escape(r["method"]), str(r["bits"]), str(r["seed"]), escape(protocol_text(r)),
             r["status"] + (" (degenerate)" if (r.get("health") or {}).get("degenerate") else ""),
             _headline(r), "-" if r.get("wall_time") is None else f"{r['wall_time']:.1f} s"]
            for r in chosen]
    header = ["id", "method", "bits", "seed", "protocol", "status", "tie-aware mAP %", "wall time"]
    return table(header, rows) + f"\n\n{len(chosen)} of {len(records)} runs"


def cmd_runs(args) -> int:
    print(runs_table(store_records(Path(args.results)), args.status, args.method))
    return 0


def _find(records: list[dict], run_id: str) -> dict:
    matches = [r for r in records if r["run_id"].startswith(run_id)] if run_id else []
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise BenchmarkError(f"{found} with id {run_id!r} in this results folder "
                             "(`python -m benchmark runs --results DIR` lists them)")
    return matches[0]


def show_text(record: dict, results: Path, tail: int = LOG_TAIL) -> str:
    def block(title, value):
        return [f"{title}:", json.dumps(value, indent=2, sort_keys=True, default=str)]
    out = [f"run {record['run_id']}: {record['method']} {record['bits']} bits seed "
           f"{record['seed']} on {record['dataset']} ({protocol_text(record)}), status "
           f"{record['status']}" + (f": {record['error']}" if record.get("error") else "")]
    out += block("spec", record["spec"]) + block("metrics", record.get("metrics") or {})
    out += block("health", record.get("health")) if record.get("health") is not None \
        else ["health: not recorded"]
    out += block("efficiency", record.get("efficiency") or {})
    provenance = {k: v for k, v in (record.get("provenance") or {}).items()}
    out += block("provenance", provenance)
    out += [f"re-run: {rerun_command(record, 'missing' if record['status'] != 'ok' else 'always')}"
            .replace("RESULTS_DIR", str(results))]
    log = read_log(Path(results) / "runs" / record["run_id"])
    if log is None:
        out.append("log: none (runs/<id>/log.txt is written by this version of the harness)")
    else:
        lines = log.rstrip("\n").splitlines()
        out += [f"log (last {min(tail, len(lines))} of {len(lines)} lines of "
                f"{Path(results) / 'runs' / record['run_id'] / 'log.txt'}):"] + lines[-tail:]
    return "\n".join(out)


def cmd_show(args) -> int:
    records = store_records(Path(args.results))
    print(show_text(_find(records, args.run_id), Path(args.results), args.tail))
    return 0
