"""The grid driver: expand the request, skip finished runs, execute and store the rest.

The runs of one grid share :class:`RunContext`: the dataset, its features per
downsampling factor (extracted once) and each materialised protocol.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import build_dataset
from ..errors import DataError
from ..features.cache import extract_features
from ..features.transforms import Transform
from ..grid.protocols import Protocol, materialise, protocol_label
from ..grid.request import GridRequest
from ..grid.runs import expand, resolve_methods
from ..store.sqlite import ResultStore
from .execute import execute


def run_grid(request: GridRequest, log=print) -> list[dict]:
    """Run every method x bits x seed of the request; return the records written."""
    request.validate()
    entries = resolve_methods(request.methods)
    dataset = build_dataset(request.dataset, data_root=request.data_root)
    if request.max_classes and request.max_classes < dataset.num_classes:
        dataset = dataset.subset(dataset.labels < request.max_classes,
                                 f"-first{request.max_classes}")
    store = ResultStore(Path(request.out) / "results.sqlite")
    grid = expand(request, entries, dataset)
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
            record = execute(entry, spec, run_id, dataset, context)
            store.put(record)
            records.append(record)
            outcome = (f"mAP {record['metrics']['map']:.4f}" if record["status"] == "ok"
                       else f"FAILED: {record['error']}")
            bar.write(f"  {spec['method']:>10} {spec['bits']:>3} bits seed {spec['seed']}"
                      f"{_protocol_note(spec['protocol'])}: {outcome}")
    store.close()
    return records


def _protocol_note(protocol: dict) -> str:
    label = protocol_label(protocol)
    return "" if label == "clean" else f" [{label}]"


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
