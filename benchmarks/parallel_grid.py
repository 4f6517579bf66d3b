"""Wall time of one 12-run grid through ``--executor local`` and ``--executor ray`` on this
machine, one thread per run, and their ratio (the goal: close to the number of cores).

    OMP_NUM_THREADS=1 python benchmarks/parallel_grid.py [--dataset synthetic-fg]
        [--methods dsh] [--epochs 30] [--input-size 64] [--data-root DIR] [--cache-dir DIR]

The grid is the methods x bits 12/24/32/48 x seeds 0-2 (12 runs for one method). The
features are cached first (untimed), then each executor runs the grid into a fresh results
folder: ``local`` in this process with one torch thread, ``ray`` as one task per run on a
local Ray started for it with this machine's CPUs (timed apart; the workers' start-up is
inside the grid's time).
Both give the same records; the script checks their metrics agree. It also prints how many
runs were in flight on average (the runs' own wall times over the grid's).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from benchmark.grid.request import GridRequest
from benchmark.run.driver import run_grid
from benchmark.run.ray_executor import connect


def timed(request: GridRequest) -> tuple[float, dict, float]:
    """(wall seconds, metrics per run id, runs in flight on average: the runs' own wall
    times over the grid's)."""
    started = time.perf_counter()
    records = run_grid(request, log=lambda _: None)
    seconds = time.perf_counter() - started
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} runs failed, first: {failed[0]['error']}")
    return seconds, {r["run_id"]: r["metrics"] for r in records}, \
        sum(r["wall_time"] for r in records) / seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic-fg")
    parser.add_argument("--methods", default="dsh")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per run, as each Ray task runs
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(methods=args.methods.split(","), dataset=args.dataset,
                      input_size=args.input_size, data_root=args.data_root,
                      cache_dir=Path(args.cache_dir or Path(tmp) / "cache"), progress=False)
        run_grid(GridRequest(**common, bits=[8], epochs=1, out=Path(tmp) / "warm"), log=lambda _: None)
        grid = dict(common, bits=[12, 24, 32, 48], seeds=[0, 1, 2], epochs=args.epochs)
        local, local_metrics, local_flight = timed(GridRequest(**grid, out=Path(tmp) / "local"))
        started = time.perf_counter()
        connect(None)
        start = time.perf_counter() - started
        try:
            ray_s, ray_metrics, ray_flight = timed(GridRequest(**grid, out=Path(tmp) / "ray",
                                                              executor="ray"))
        finally:
            ray.shutdown()
    same = "identical" if local_metrics == ray_metrics else "DIFFERENT"
    print(f"{len(local_metrics)} runs ({args.methods} on {args.dataset}, {args.epochs} epochs), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"local: {local:.1f} s   ray: {start + ray_s:.1f} s ({start:.1f} s starting Ray, "
          f"{ray_s:.1f} s the grid)   local / ray: {local / (start + ray_s):.2f}x "
          f"({local / ray_s:.2f}x without the start)   metrics {same}")
    print(f"runs in flight on average: local {local_flight:.2f}, ray {ray_flight:.2f} (a ratio "
          f"below that means the cores were shared with other work)")


if __name__ == "__main__":
    main()
