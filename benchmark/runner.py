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
from .errors import BenchmarkError, DataError
from .evaluation import save_pr_curve
from .features import Transform, extract_features
from .protocols import Protocol, expand_grid, macro_map, materialise
from .profiling import profile_run
from .store import ResultStore
from .backbones import file_sha256

OVERWRITE_MODES = ("never", "missing", "always")
REGIMES = ("frozen", "finetune")
BAD_IMAGE_MODES = ("fail", "skip")


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
    #: protocol grids (CLI syntax, e.g. "symmetric:0,0.2"); every combination is run
    noise: str | None = None
    long_tail: str | None = None
    resolution: list[float] = field(default_factory=lambda: [1])
    resolution_db: float = 1
    val_frac: float = 0.0
    on_bad_image: str = "fail"
    backbone_weights: str | None = None

    def protocols(self) -> list[Protocol]:
        """Every protocol combination of the request (duplicates after normalising dropped)."""
        out = {}
        for noise in expand_grid(self.noise, "--noise"):
            for tail in expand_grid(self.long_tail, "--long-tail"):
                for resolution in self.resolution:
                    p = Protocol(noise=noise, long_tail=tail, resolution=resolution,
                                 resolution_db=self.resolution_db, val_frac=self.val_frac)
                    out.setdefault(json.dumps(p.spec(), sort_keys=True), p)
        return list(out.values())

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
        if self.on_bad_image not in BAD_IMAGE_MODES:
            raise BenchmarkError(f"--on-bad-image must be one of {', '.join(BAD_IMAGE_MODES)}")
        if self.backbone_weights and not Path(self.backbone_weights).is_file():
            raise BenchmarkError(f"--backbone-weights {self.backbone_weights}: no such file")
        self.protocols()  # parses (and so validates) every protocol value


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
    store = ResultStore(Path(request.out) / "results.sqlite")
    grid = []
    for entry in entries:
        for protocol in request.protocols():
            for bits in request.bits:
                for seed in request.seeds:
                    spec = {"method": entry.name, "plugin": entry.plugin,
                            "distribution": entry.distribution, "version": entry.version,
                            "hparams": {}, "dataset": dataset.name,
                            "data": dataset.fingerprint(), "regime": request.regime,
                            "backbone": request.backbone, "input_size": request.input_size,
                            "protocol": protocol.spec(),
                            "bits": bits, "seed": seed, "epochs": request.epochs}
                    if request.backbone_weights:
                        spec["backbone_weights"] = file_sha256(request.backbone_weights)[:16]
                    grid.append((entry, spec, run_id_of(spec)))
    todo = [(e, s, r) for e, s, r in grid
            if request.overwrite == "always"
            or (request.overwrite == "missing" and store.status(r) != "ok")
            or (request.overwrite == "never" and store.status(r) is None)]
    log(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already recorded, "
        f"{len(todo)} to run -> {store.path}")
    records = []
    if todo:
        context = RunContext(dataset, request, log)
        bar = tqdm(todo, desc="runs", unit="run", disable=not request.progress)
        for entry, spec, run_id in bar:
            bar.set_postfix_str(f"{spec['method']} {spec['bits']}b seed {spec['seed']}")
            record = execute(entry, spec, run_id, dataset, context, request)
            store.put(record)
            records.append(record)
            outcome = (f"mAP {record['metrics']['map']:.4f}" if record["status"] == "ok"
                       else f"FAILED: {record['error']}")
            bar.write(f"  {spec['method']:>10} {spec['bits']:>3} bits seed {spec['seed']}"
                      f"{protocol_label(spec['protocol'])}: {outcome}")
    store.close()
    return records


def protocol_label(protocol: dict) -> str:
    """Short text of the non-default protocol fields (for log lines)."""
    default = Protocol().spec()
    parts = [f"{k}={v}" for k, v in protocol.items() if default.get(k) != v]
    return f" [{', '.join(parts)}]" if parts else ""


class RunContext:
    """What the runs of one grid share: features per downsampling factor (extracted once,
    lazily; an extraction error is remembered and fails each run that needs it) and the
    materialised protocol per (protocol, seed)."""

    def __init__(self, dataset, request: GridRequest, log=print):
        self.dataset, self.request, self.log = dataset, request, log
        self._features: dict[float, object] = {}
        self._splits: dict[str, object] = {}

    def features(self, factor: float = 1):
        if factor not in self._features:
            r = self.request
            try:
                feats = extract_features(self.dataset, r.backbone, Transform(r.input_size, float(factor)),
                                         r.cache_dir, progress=r.progress,
                                         on_bad_image=r.on_bad_image, weights=r.backbone_weights)
                self.log(f"features x1/{factor}: {feats.path} ({feats.nbytes / 2**20:.0f} MiB cached)")
                for index, message in feats.bad:
                    self.log(f"warning: skipped {message}")
            except DataError as exc:
                feats = exc
            self._features[factor] = feats
        if isinstance(self._features[factor], Exception):
            raise self._features[factor]
        return self._features[factor]

    def usable(self) -> np.ndarray:
        """Images that can be read (all unless --on-bad-image skip dropped some)."""
        ok = np.ones(len(self.dataset), dtype=bool)
        if self.request.regime == "frozen":
            ok[[i for i, _ in self.features(1).bad]] = False
        return ok

    def split(self, protocol: dict, seed: int):
        key = json.dumps([protocol, seed], sort_keys=True)
        if key not in self._splits:
            ds, ok = self.dataset, self.usable()
            query = ~ds.is_train if ds.query_mask is None else ds.query_mask
            self._splits[key] = materialise(
                ds.labels, ds.is_train & ok, ds.num_classes, Protocol(**protocol), seed,
                query_mask=query & ok, db_mask=None if ds.db_mask is None else ds.db_mask & ok)
        return self._splits[key]


def metrics_for(dataset, split):
    """The evaluation of a dataset: re-ID (same-camera filtering) when it has camera ids,
    else ``evaluate_codes``."""
    from . import evaluation
    if dataset.cameras is None:
        return evaluation.evaluate_codes
    query_cameras, db_cameras = dataset.cameras[split.query_index], dataset.cameras[split.db_index]
    person_id = np.array([int(c) for c in dataset.classes])  # -1 = junk, 0 = distractor

    def reid(query_codes, db_codes, query_labels, db_labels):
        return evaluation.evaluate_reid(query_codes, db_codes, person_id[query_labels],
                                        person_id[db_labels], query_cameras, db_cameras)
    return reid


def execute(entry, spec, run_id, dataset, context, request) -> dict:
    started = time.time()
    record = {"run_id": run_id, "method": spec["method"], "dataset": spec["dataset"],
              "regime": spec["regime"], "backbone": spec["backbone"], "bits": spec["bits"],
              "seed": spec["seed"], "distribution": entry.distribution, "version": entry.version,
              "spec": spec, "protocol": spec["protocol"], "metrics": {}, "efficiency": {},
              "provenance": {"versions": versions(), "hardware": hardware_id()},
              "status": "ok", "error": None}
    try:
        protocol = spec["protocol"]
        split = context.split(protocol, spec["seed"])
        record["protocol"] = dict(protocol, materialised=split.facts)
        metrics_fn = metrics_for(dataset, split)
        if spec["regime"] == "finetune":
            from .finetune import run_finetune
            result = run_finetune(entry.cls, spec, dataset, split, request, metrics_fn)
        else:
            factors = getattr(entry.cls, "train_resolutions", (1,)) or (1,)
            result = run_method(
                entry.cls, spec["hparams"], context.features(1), dataset.labels, dataset.is_train,
                dataset.num_classes, spec["bits"], spec["seed"], spec["epochs"], split=split,
                query_features=context.features(protocol["resolution"]) if protocol["resolution"] != 1 else None,
                db_features=context.features(protocol["resolution_db"]) if protocol["resolution_db"] != 1 else None,
                resolution_features={f: context.features(f) for f in factors if f != 1},
                metrics_fn=metrics_fn)
        record["metrics"] = result["metrics"]
        codes = result["codes"]
        record["metrics"]["macro_map"] = macro_map(codes["query_codes"], codes["db_codes"],
                                                   codes["query_labels"], codes["db_labels"])
        record["provenance"]["selection"] = result["selection"]
        record["provenance"]["load_average"] = round(os.getloadavg()[0], 2)  # while timing
        record["efficiency"] = profile_run(result["method"], result["input_shapes"], spec["backbone"],
                                           spec["input_size"], codes["db_codes"], codes["query_codes"],
                                           result.get("real"))
        record["provenance"].update(epochs=result["epochs"], loss_history=result["history"])
        save_codes(Path(request.out) / "runs" / run_id, result["codes"])
        if dataset.cameras is None:
            save_pr_curve(Path(request.out) / "runs" / run_id, codes)
    except Exception as exc:  # noqa: BLE001 - a failing plugin must not stop the grid
        record.update(status="failed", error=one_line(exc), metrics={}, efficiency={})
    record["wall_time"] = round(time.time() - started, 3)
    return record
