"""``runs/<id>/log.txt``: one run's resolved spec, per-epoch loss components and time,
model selection, health, warnings, outcome and, for a failed run, its full traceback.

Lines are collected while the run goes and the file is written (temporary name, then
renamed) when the run ends, like the run's other files; the record keeps only the one-line
``error``.
"""
from __future__ import annotations

import json
import os
import traceback
from collections import Counter
from pathlib import Path

LOG_FILE = "log.txt"


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class RunLog:
    """The lines of one run's log; :meth:`write` puts them in ``folder/log.txt``."""

    def __init__(self, run_id: str, spec: dict):
        self.lines = [f"run {run_id}: {spec['method']} {spec['bits']} bits seed {spec['seed']} "
                      f"on {spec['dataset']}",
                      "spec: " + json.dumps(spec, sort_keys=True)]
        self.warnings: Counter = Counter()

    def epoch(self, facts: dict) -> None:
        """``loop.train``'s ``epoch_log``: mean summed loss, each component, seconds."""
        parts = ", ".join(f"{k} {_number(v)}" for k, v in facts["components"].items())
        lr = "/".join(_number(v) for v in facts.get("lr") or [])  # each optimiser's
        self.lines.append(f"epoch {facts['epoch']}: loss {_number(facts['loss'])}"
                          f" ({parts}) in {facts['seconds']:.3f} s" + (f", lr {lr}" if lr else ""))

    def warning(self, message: str) -> None:
        self.warnings[" ".join(str(message).split())] += 1

    def facts(self, name: str, value) -> None:
        self.lines.append(f"{name}: " + json.dumps(value, sort_keys=True, default=str))

    def failure(self, exc: BaseException) -> None:
        self.lines.append("traceback:")
        self.lines += "".join(traceback.format_exception(exc)).rstrip("\n").splitlines()

    def text(self, record: dict) -> str:
        out = list(self.lines)
        out += [f"warning: {m}" + (f" (x{n})" if n > 1 else "") for m, n in self.warnings.items()]
        if record.get("health") is not None:
            out.append("health: " + json.dumps(record["health"], sort_keys=True))
        metrics = record.get("metrics") or {}
        headline = " ".join(f"{k} {_number(metrics[k])}" for k in ("map_tie_aware", "map")
                            if k in metrics)
        out.append(f"status: {record['status']}"
                   + (f" ({record['error']})" if record.get("error") else "")
                   + (f"; {headline}" if headline else "")
                   + (f"; wall {record['wall_time']:.1f} s" if record.get("wall_time") else ""))
        return "\n".join(out) + "\n"

    def write(self, folder: Path, record: dict) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{LOG_FILE}.tmp"
        tmp.write_text(self.text(record), encoding="utf-8")
        os.replace(tmp, folder / LOG_FILE)
        return folder / LOG_FILE


def read_log(folder: Path) -> str | None:
    path = Path(folder) / LOG_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None
