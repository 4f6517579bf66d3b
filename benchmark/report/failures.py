"""Failed and degenerate runs, listed under each table: method, bits, seed, protocol, the
one-line error (or the health facts) and the command that re-runs them."""
from __future__ import annotations

import json
import re
import shlex

from .grouping import is_degenerate, protocol_text
from .markdown import code, escape, table
from .setup_table import non_default_hparams

RESULTS_PLACEHOLDER = "RESULTS_DIR"


def _protocol_flags(protocol: dict) -> list[str]:
    flags = []
    for key, flag, default in (("noise", "--noise", None), ("long_tail", "--long-tail", None),
                               ("resolution", "--resolution", 1),
                               ("resolution_db", "--resolution-db", 1),
                               ("val_frac", "--val-frac", 0)):
        value = protocol.get(key, default)
        if value not in (None, default):
            flags += [flag, str(value)]
    return flags


def rerun_command(record: dict, overwrite: str = "missing") -> str:
    """The ``python -m benchmark run`` line that repeats this record's spec."""
    spec = record.get("spec") or {}
    dataset, classes = spec.get("dataset", record.get("dataset")), None
    match = re.fullmatch(r"(.+)-first(\d+)", str(dataset))
    if match:
        dataset, classes = match.group(1), match.group(2)
    args = ["python", "-m", "benchmark", "run", "--methods", record["method"],
            "--dataset", dataset, "--bits", str(record["bits"]), "--seeds", str(record["seed"])]
    for key, flag, default in (("regime", "--regime", "frozen"),
                               ("backbone", "--backbone", "efficientnet_lite0"),
                               ("input_size", "--input-size", 224), ("epochs", "--epochs", None),
                               ("on_bad_image", "--on-bad-image", "fail")):
        if spec.get(key, default) != default:
            args += [flag, str(spec[key])]
    if "epochs" not in spec and (spec.get("train") or {}).get("epochs") is not None:
        args += ["--epochs", str(spec["train"]["epochs"])]  # the effective epochs
    if classes:
        args += ["--max-classes", classes]
    args += _protocol_flags(spec.get("protocol") or {})
    if spec.get("backbone_weights"):
        args += ["--backbone-weights", f"WEIGHTS_{spec['backbone_weights']}"]
    changed = non_default_hparams(record)
    if changed:
        args += ["--hparams", ",".join(f"{record['method']}.{k}={v if isinstance(v, str) else json.dumps(v)}"
                                       for k, v in changed.items())]
    args += ["--out", RESULTS_PLACEHOLDER] + (["--overwrite", overwrite] if overwrite != "missing" else [])
    return " ".join(shlex.quote(a) for a in args)


def _health_text(record: dict) -> str:
    health = record.get("health") or {}
    shown = {k: v for k, v in sorted(health.items()) if k != "degenerate" and not isinstance(v, (list, dict))}
    reasons = health.get("reasons") or health.get("reason")
    text = "degenerate" + (f": {reasons if isinstance(reasons, str) else '; '.join(map(str, reasons))}"
                           if reasons else "")
    return text + (" (" + ", ".join(f"{k} {v}" for k, v in shown.items()) + ")" if shown else "")


def problem_runs(ok: list[dict], failed: list[dict]) -> list[dict]:
    return sorted([r for r in ok if is_degenerate(r)] + list(failed),
                  key=lambda r: (protocol_text(r), r["method"], r["bits"], r["seed"], r["run_id"]))


def render_problems(ok: list[dict], failed: list[dict]) -> str:
    """The list under a table (empty string when every run is ok and healthy)."""
    runs = problem_runs(ok, failed)
    if not runs:
        return ""
    rows = [[escape(r["method"]), str(r["bits"]), str(r["seed"]), escape(protocol_text(r)),
             "failed" if r["status"] != "ok" else "ok, degenerate",
             escape(r.get("error") or "") if r["status"] != "ok" else escape(_health_text(r)),
             code(r["run_id"]),
             code(rerun_command(r, "missing" if r["status"] != "ok" else "always"))]
            for r in runs]
    header = ["Method", "Bits", "Seed", "Protocol", "Status", "Error / health", "Run id", "Re-run"]
    failed_n, degenerate_n = len(failed), len(runs) - len(failed)
    return (f"Failed and degenerate runs of this setting ({failed_n} failed, {degenerate_n} "
            f"degenerate; failed runs are in no cell, degenerate ones are marked "
            f"\u2020; `{RESULTS_PLACEHOLDER}` is the results folder, `python -m benchmark "
            f"show RUN_ID --results {RESULTS_PLACEHOLDER}` prints a run's log):\n\n"
            + table(header, rows))
