"""The grid: expand a request into run specs, skip finished ones, run and record each.

A run's identity is a hash of its resolved spec (method + its plugin version and hparams,
dataset fingerprint, regime, backbone, input size, bits, seed, epochs). A failing run is
recorded with ``status = 'failed'`` and its one-line error; the grid goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from registry import load_plugins
from registry.loading import one_line

from .data import build_dataset
from .engine import run_method
from .errors import BenchmarkError
from .features import Transform, extract_features
from .profiling import profile_inference
from .store import ResultStore

OVERWRITE_MODES = ("never", "missing", "always")
REGIMES = ("frozen",)


@dataclass
class GridRequest:
    methods: list[str]
    dataset: str = "cub100"
    bits: list[int] = field(default_factory=lambda: [12, 24, 32, 48])
    seeds: list[int] = field(default_factory=lambda: [0])
    regime: str = "frozen"
    backbone: str = "efficientnet_lite0"
    input_size: int = 224
    epochs: int | None = None
    max_classes: int | None = None
    data_root: str | None = None
    out: Path = Path("results")
    overwrite: str = "missing"
    cache_dir: Path | None = None
    progress: bool = True

    def validate(self) -> None:
        if not self.methods:
            raise BenchmarkError("no methods given (--methods a,b,...)")
        if any(b <= 0 for b in self.bits):
            raise BenchmarkError(f"bits must be positive integers, got {self.bits}")
        if self.overwrite not in OVERWRITE_MODES:
            raise BenchmarkError(f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}")
        if self.regime not in REGIMES:
            raise BenchmarkError(f"unknown regime {self.regime!r}; available: {', '.join(REGIMES)}")
        if self.input_size < 32:
            raise BenchmarkError("--input-size must be at least 32")
        if self.max_classes is not None and self.max_classes < 2:
            raise BenchmarkError("--max-classes must be at least 2")
        if self.epochs is not None and self.epochs < 1:
            raise BenchmarkError("--epochs must be at least 1")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "mmengine", "faiss-cpu", "pluggy", "fghashbench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def hardware_id() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()} threads={torch.get_num_threads()}"


def resolve_methods(names: list[str]):
    plugins = load_plugins()
    failed = {f.plugin: f for f in plugins.failures}
    entries = []
    for name in names:
        if name in plugins.methods:
            entries.append(plugins.methods[name])
        elif name in failed:
            raise BenchmarkError(f"method {name!r}: its plugin failed to load: {failed[name].reason}")
        else:
            known = ", ".join(plugins.methods) or "(none)"
            raise BenchmarkError(f"unknown method {name!r}; registered methods: {known}")
    return entries


def run_id_of(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def save_codes(folder: Path, codes: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "codes.tmp.npz"
    np.savez_compressed(tmp, **codes)
    os.replace(tmp, folder / "codes.npz")


def run_grid(request: GridRequest, log=print) -> list[dict]:
    """Run every method x bits x seed of the request; return the records written."""
    request.validate()
    entries = resolve_methods(request.methods)
    dataset = build_dataset(request.dataset, data_root=request.data_root)
    if request.max_classes and request.max_classes < dataset.num_classes:
        dataset = dataset.subset(dataset.labels < request.max_classes,
                                 f"-first{request.max_classes}")
    transform = Transform(request.input_size)
    store = ResultStore(Path(request.out) / "results.sqlite")
    grid = []
    for entry in entries:
        for bits in request.bits:
            for seed in request.seeds:
                spec = {"method": entry.name, "plugin": entry.plugin,
                        "distribution": entry.distribution, "version": entry.version,
                        "hparams": {}, "dataset": dataset.name,
                        "data": dataset.fingerprint(), "regime": request.regime,
                        "backbone": request.backbone, "input_size": request.input_size,
                        "protocol": {"noise": None, "long_tail": None, "resolution": 1},
                        "bits": bits, "seed": seed, "epochs": request.epochs}
                grid.append((entry, spec, run_id_of(spec)))
    todo = [(e, s, r) for e, s, r in grid
            if request.overwrite == "always"
            or (request.overwrite == "missing" and store.status(r) != "ok")
            or (request.overwrite == "never" and store.status(r) is None)]
    log(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already recorded, "
        f"{len(todo)} to run -> {store.path}")
    records = []
    if todo:
        features = extract_features(dataset, request.backbone, transform, request.cache_dir,
                                    progress=request.progress)
        log(f"features: {features.path} ({features.nbytes / 2**20:.0f} MiB cached)")
        bar = tqdm(todo, desc="runs", unit="run", disable=not request.progress)
        for entry, spec, run_id in bar:
            bar.set_postfix_str(f"{spec['method']} {spec['bits']}b seed {spec['seed']}")
            record = execute(entry, spec, run_id, dataset, features, request)
            store.put(record)
            records.append(record)
            outcome = (f"mAP {record['metrics']['map']:.4f}" if record["status"] == "ok"
                       else f"FAILED: {record['error']}")
            bar.write(f"  {spec['method']:>10} {spec['bits']:>3} bits seed {spec['seed']}: {outcome}")
    store.close()
    return records


def execute(entry, spec, run_id, dataset, features, request) -> dict:
    started = time.time()
    record = {"run_id": run_id, "method": spec["method"], "dataset": spec["dataset"],
              "regime": spec["regime"], "backbone": spec["backbone"], "bits": spec["bits"],
              "seed": spec["seed"], "distribution": entry.distribution, "version": entry.version,
              "spec": spec, "protocol": spec["protocol"], "metrics": {}, "efficiency": {},
              "provenance": {"versions": versions(), "hardware": hardware_id()},
              "status": "ok", "error": None}
    try:
        result = run_method(entry.cls, spec["hparams"], features, dataset.labels, dataset.is_train,
                            dataset.num_classes, spec["bits"], spec["seed"], spec["epochs"])
        record["metrics"] = result["metrics"]
        record["efficiency"] = profile_inference(result["method"], result["input_shapes"],
                                                 spec["backbone"], spec["input_size"])
        record["provenance"].update(epochs=result["epochs"], loss_history=result["history"])
        save_codes(Path(request.out) / "runs" / run_id, result["codes"])
    except Exception as exc:  # noqa: BLE001 - a failing plugin must not stop the grid
        record.update(status="failed", error=one_line(exc), metrics={}, efficiency={})
    record["wall_time"] = round(time.time() - started, 3)
    return record
