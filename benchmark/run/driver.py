"""The grid driver: expand the request, skip finished runs and runs another live process
holds (processes sharing a results folder split the grid), execute and store the rest.

The runs of one grid share :class:`RunContext`: the dataset, its features per
downsampling factor (extracted once) and each materialised protocol.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import build_grid_dataset
from ..errors import DataError
from ..features.cache import extract_features
from ..features.transforms import Transform
from ..grid.protocols import Protocol, materialise, protocol_label
from ..grid.request import GridRequest
from ..grid.runs import UnloadedMethod, expand, resolve_methods
from ..store.sqlite import ResultStore
from .execute import execute, new_record
from . import checkpoint as checkpoints
from .folders import discard, publish, settle
from .inputs import frozen_outputs


WANTED = {"always": lambda status: True, "missing": lambda status: status != "ok",
          "never": lambda status: status is None}  # --overwrite: run it, given its stored status


def run_grid(request: GridRequest, log=print) -> list[dict]:
    """Run every method x bits x seed of the request; return the records written. Every
    flag, method, dataset and backbone name is checked before any work; the store is
    closed however the grid ends."""
    request.validate()
    entries = resolve_methods(request.methods, request.method_settings())
    dataset = build_grid_dataset(request.dataset, request.data_root, request.max_classes)
    with ResultStore(Path(request.out) / "results.sqlite") as store:
        return _run_all(request, entries, dataset, store, log)


def _run_all(request: GridRequest, entries, dataset, store: ResultStore, log) -> list[dict]:
    """The grid's runs on an open store; a run another process holds (or finished during
    this grid) is skipped, so processes sharing a results folder split its work."""
    started = time.time()
    with store.transaction():  # no other process claims a run while leftovers are settled
        if not store.others_running():
            for name in settle(request.out, store):
                log(f"removed runs/{name}: files of a killed run without a stored row")
    grid = expand(request, entries, dataset)
    wanted = WANTED[request.overwrite]
    todo = [(e, s, r) for e, s, r in grid if wanted(store.status(r))]
    log(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already recorded, "
        f"{len(todo)} to run -> {store.path}")
    records = []
    if todo:
        context = RunContext(dataset, request, log, frozen_outputs(e.cls for e, _, _ in todo))
        bar = tqdm(todo, desc="runs", unit="run", disable=not request.progress)
        if request.executor == "ray":
            return _on_ray(todo, dataset, context, store, lambda r: store.claim(r, wanted, started), bar)
        for entry, spec, run_id in bar:
            label = _label(spec)
            bar.set_postfix_str(f"{spec['method']} {spec['bits']}b seed {spec['seed']}")
            busy = store.claim(run_id, wanted, started)
            if busy:
                bar.write(f"  {label}: skipped, {busy}")
                continue
            try:
                record = _run_one(entry, spec, run_id, dataset, context, store)
            finally:
                store.release(run_id)  # a no-op once the row is stored
            records.append(record)
            bar.write(f"  {label}: {_outcome(record)}")
    return records


def _label(spec: dict) -> str:
    return (f"{spec['method']:>10} {spec['bits']:>3} bits seed {spec['seed']}"
            f"{_protocol_note(spec['protocol'])}")


def _outcome(record: dict) -> str:
    return (f"mAP {record['metrics']['map']:.4f}" if record["status"] == "ok"
            else f"FAILED: {record['error']}")


def _on_ray(todo, dataset, context, store: ResultStore, claim, bar) -> list[dict]:
    """The runs as Ray tasks (:mod:`.ray_executor`): each claimed (and its old row and files
    discarded) when submitted, stored by this process as it finishes; an unloadable
    plugin's runs are recorded failed here."""
    from .ray_executor import run_on_ray
    held: set[str] = set()

    def begin(entry, spec, run_id) -> bool:
        busy = claim(run_id)
        if busy:
            bar.write(f"  {_label(spec)}: skipped, {busy}")
            return False
        held.add(run_id)
        discard(context.request.out, store, run_id)
        return True

    loaded = [item for item in todo if not isinstance(item[0], UnloadedMethod)]
    records = [_run_one(*item, dataset, context, store) for item in todo
               if isinstance(item[0], UnloadedMethod) and begin(*item)]
    try:
        for entry, spec, run_id, record in run_on_ray(loaded, dataset, context, begin, bar):
            _store(record, context, store)
            held.discard(run_id)
            records.append(record)
            bar.write(f"  {_label(spec)}: {_outcome(record)}")
    finally:
        for run_id in held:
            store.release(run_id)
    return records


def _run_one(entry, spec: dict, run_id: str, dataset, context, store: ResultStore) -> dict:
    """Execute one claimed run (or record an unloadable plugin's run failed) and store it."""
    out = context.request.out
    discard(out, store, run_id)
    if isinstance(entry, UnloadedMethod):
        record = new_record(entry, spec, run_id)
        record.update(status="failed", error=entry.error, wall_time=0.0)
    else:
        record = execute(entry, spec, run_id, dataset, context)
    _store(record, context, store)
    return record


def _store(record: dict, context, store: ResultStore) -> None:
    """A finished run's row, then its published folder (its checkpoint dropped)."""
    out = context.request.out
    store.put(record)
    publish(out, record["run_id"])
    if not context.request.keep_checkpoints:  # the record is written: nothing to resume
        checkpoints.discard(out, record["run_id"])


def _protocol_note(protocol: dict) -> str:
    label = protocol_label(protocol)
    return "" if label == "clean" else f" [{label}]"


class RunContext:
    """What the runs of one grid share: features per downsampling factor (extracted once,
    lazily; an extraction error is remembered and fails each run that needs it) and the
    materialised protocol per (protocol, seed)."""

    def __init__(self, dataset, request: GridRequest, log=print, outputs=None):
        self.dataset, self.request, self.log = dataset, request, log
        self.outputs = outputs  # the cached outputs the runs read (None: all)
        self._features: dict[float, object] = {}
        self._splits: dict[str, object] = {}

    def features(self, factor: float = 1):
        if factor not in self._features:
            r = self.request
            try:
                feats = extract_features(self.dataset, r.backbone, Transform(r.input_size, float(factor)),
                                         r.cache_dir, progress=r.progress,
                                         on_bad_image=r.on_bad_image, weights=r.backbone_weights,
                                         outputs=self.outputs)
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
