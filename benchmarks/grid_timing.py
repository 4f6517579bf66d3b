"""Where the default grid's time goes: one run of each default-grid method on cub100 (frozen,
one bit length, seed 0) through the harness, then a table of each record's
``provenance.timing`` (benchmark/run/timing.py) and wall time.

    OMP_NUM_THREADS=1 python benchmarks/grid_timing.py [--methods a,b] [--bits 32] \
        [--epochs N] [--out DIR] [--data-root DIR]

``--epochs`` overrides every method's epochs (default: each method's own, as the grid runs
them); ``--out`` keeps the results folder (default: a temporary one). ``--records FILE``
prints the table of an existing store or ``records.jsonl`` instead of running. The grid's
projected cost multiplies each run by the grid's bit lengths and seeds (4 x 5).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.grid.defaults import DEFAULT_GRID  # noqa: E402
from benchmark.grid.request import GridRequest  # noqa: E402
from benchmark.run.driver import run_grid  # noqa: E402
from benchmark.run.timing import STEPS  # noqa: E402
from benchmark.store.sqlite import ResultStore  # noqa: E402


def load_records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with ResultStore(path) as store:
        return store.records()


def table(records: list[dict], runs_per_method: int) -> str:
    """One row per record: steps, epochs, mean epoch, wall time, projected grid hours."""
    rows = []
    for r in sorted(records, key=lambda r: -(r.get("wall_time") or 0)):
        timing = (r.get("provenance") or {}).get("timing") or {}
        epochs = timing.get("train_epochs") or []
        wall = r.get("wall_time")
        rows.append([r["method"], r["bits"], *(timing.get(s) for s in STEPS), len(epochs),
                     sum(epochs) / len(epochs) if epochs else None, wall,
                     None if wall is None else wall * runs_per_method / 3600])
    total = sum(r[-2] or 0 for r in rows)
    rows.append(["total", "", *[""] * len(STEPS), "", "", total, total * runs_per_method / 3600])
    headers = ["method", "bits", *(f"{s} s" for s in STEPS), "epochs", "s/epoch", "wall s",
               f"grid h (x{runs_per_method})"]
    return tabulate(rows, headers, tablefmt="github", floatfmt=".2f", missingval="-")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_GRID["methods"]))
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--out")
    parser.add_argument("--records", help="a results.sqlite or records.jsonl to tabulate")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    args = parser.parse_args(argv)
    runs = len(DEFAULT_GRID["bits"]) * len(DEFAULT_GRID["seeds"])
    if args.records:
        print(table(load_records(Path(args.records)), runs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        request = GridRequest(methods=args.methods.split(","), dataset=DEFAULT_GRID["dataset"],
                              bits=[args.bits], seeds=[0], epochs=args.epochs,
                              data_root=args.data_root, out=out, progress=False,
                              overwrite="always")
        records = run_grid(request, log=lambda *a: None)
        print(f"cub100, frozen, {args.bits} bits, seed 0, epochs "
              f"{args.epochs or 'as each method sets'}; seconds per step (provenance.timing)")
        print(table(records, runs))


if __name__ == "__main__":
    main()
