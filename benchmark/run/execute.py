"""Execute one run of the grid and return its record: protocol -> inputs -> train ->
encode -> evaluate (one ranking for every metric) -> profile -> files beside the store.

A failing run is a record with ``status = 'failed'`` and its one-line error; the grid goes
on. Its files go into ``runs/<id>.partial/`` (see :mod:`.folders`).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from registry.loading import one_line

from ..eval.machine import hardware_id, versions
from ..eval.metrics import evaluate_retrieval, map_real_valued, save_pr_curve
from ..eval.profiling import profile_run
from ..eval.reid import evaluate_reid
from ..grid import splitfile
from ..method import hparam_defaults
from . import checkpoint as checkpoints
from .device import device_label, resolve_device
from .folders import partial_folder
from .health import health
from .inputs import FinetuneInputs, FrozenInputs, train_factors
from .log import RunLog
from .loop import seed_everything
from .method_run import run_method
from .timing import RunTiming


def evaluate(dataset, split, codes: dict) -> tuple[dict, dict | None]:
    """(metrics, precision-recall or None) of a run's codes: re-ID metrics (same-camera
    filtering) when the dataset has camera ids, else :func:`evaluate_retrieval`."""
    args = (codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"])
    if dataset.cameras is None:
        result = evaluate_retrieval(*args)
        return result.metrics, result.pr
    person_id = np.array([int(c) for c in dataset.classes])  # -1 = junk, 0 = distractor
    return evaluate_reid(args[0], args[1], person_id[args[2]], person_id[args[3]],
                         dataset.cameras[split.query_index], dataset.cameras[split.db_index]), None


def save_codes(folder: Path, codes: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "codes.tmp.npz"
    np.savez_compressed(tmp, **codes)
    os.replace(tmp, folder / "codes.npz")


def declared_defaults(method_cls, spec: dict) -> dict:
    """The method's declared default of each resolved hyperparameter (what the setup tables
    compare against to show the non-default ones)."""
    defaults = hparam_defaults(method_cls)
    return {k: defaults[k] for k in spec.get("hparams") or {} if k in defaults}


def new_record(entry, spec: dict, run_id: str) -> dict:
    return {"run_id": run_id, "method": spec["method"], "dataset": spec["dataset"],
            "regime": spec["regime"], "backbone": spec["backbone"], "bits": spec["bits"],
            "seed": spec["seed"], "distribution": entry.distribution, "version": entry.version,
            "spec": spec, "protocol": spec["protocol"], "metrics": {}, "efficiency": {},
            "provenance": {"versions": versions(), "hardware": hardware_id(),
                           "hparam_defaults": declared_defaults(entry.cls, spec)},
            "health": None, "status": "ok", "error": None}


def frozen_factors(method_cls, protocol: dict) -> list:
    """The downsampling factors whose cached features a frozen run reads."""
    return sorted({1, protocol["resolution"], protocol["resolution_db"], *train_factors(method_cls)})


def inputs_for(entry, spec, split, dataset, context):
    """The regime's input source for this run (see ``run.inputs``)."""
    protocol = spec["protocol"]
    if spec["regime"] == "finetune":
        return FinetuneInputs(entry.cls, split, dataset, spec, context.request)
    factors = frozen_factors(entry.cls, protocol)
    source = FrozenInputs(entry.cls, split, {f: context.features(f) for f in factors},
                          protocol["resolution"], protocol["resolution_db"])
    source.device = resolve_device(context.request.device)  # where the method trains
    return source


def profile_key(spec: dict, dataset) -> str:
    """What a run's efficiency depends on (``eval.profiling.profile_run``'s ``key``): seeds
    and protocols of one method, code, hparams, bits and input size share one profile."""
    return json.dumps([spec["method"], spec.get("distribution"), spec.get("version"), spec.get("code"),
                       spec.get("hparams"), spec["bits"], spec["backbone"], spec["input_size"],
                       dataset.num_classes], sort_keys=True, default=str)


_SHOWN: set[str] = set()


def execute(entry, spec, run_id, dataset, context) -> dict:
    """One run -> its record; ``runs/<id>/log.txt`` gets the spec, epochs, warnings, health,
    outcome and a failed run's traceback (:mod:`benchmark.run.log`)."""
    log = RunLog(run_id, spec)
    with warnings.catch_warnings(record=True) as caught:
        record = _execute(entry, spec, run_id, dataset, context, log)
    for item in caught:
        text = f"{item.category.__name__}: {item.message}"
        log.warning(text)
        if text not in _SHOWN:  # on stderr once per process, as Python's default filter does
            _SHOWN.add(text)
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)
    log.write(partial_folder(context.request.out, run_id), record)
    return record


def split_for(spec: dict, context):
    """The run's materialised protocol: from its split file (``grid.splitfile``) or drawn."""
    if spec["protocol"].get("split_file"):
        return splitfile.split_of(context.request.protocol_file)
    return context.split(spec["protocol"], spec["seed"])


def _train_once(entry, spec, checkpoint_id: str, split, dataset, context, log: RunLog,
                timing: RunTiming, epochs=None, encode=True) -> tuple[dict, object]:
    """(run_method's result, input source) of one training on ``split``; its steps'
    seconds added to ``timing``."""
    seed_everything(spec["seed"])
    with timing.step("data"):
        source = inputs_for(entry, spec, split, dataset, context)
    checkpoint = checkpoints.for_run(context.request.out, checkpoint_id, spec["regime"],
                                     source.device, context.log)
    tick = time.perf_counter()
    result = run_method(entry.cls, spec["hparams"], source, dataset.labels, dataset.num_classes,
                        spec["bits"], spec["seed"], epochs=epochs, epoch_log=timing.epoch_log(log.epoch),
                        checkpoint=checkpoint, train=spec.get("train"), encode=encode)
    timing.add("encode", result.get("encode_seconds", 0.0))
    timing.add("train", time.perf_counter() - tick - result.get("encode_seconds", 0.0))
    if checkpoint.resumed_from is not None:
        result["resumed_after_epoch"] = checkpoint.resumed_from
    return result, source


def reported_run(entry, spec, run_id, split, dataset, context, log: RunLog,
                 timing: RunTiming) -> tuple:
    """(result, input source, split) of the run a record reports. With a validation split
    (``val_rule = "retrain"``, README "Protocols") a trainable method is first trained on
    the train part with every epoch scored on validation; then a fresh model (same seed) is
    trained on the full training split (train + validation) for the selected number of
    epochs, so the reported database is the full training split. Closed-form methods fit
    the full training split."""
    chosen = None
    if len(split.val_index):
        if entry.cls.trainable:
            log.facts("phase", "selection: train part, every epoch scored on validation")
            chosen = _train_once(entry, spec, run_id, split, dataset, context, log, timing,
                                 encode=False)[0]["selection"]
            log.facts("phase", f"retrain: full training split, {chosen['epoch']} epochs")
        split = split.full_training()
    retrain_id = run_id if chosen is None else f"{run_id}-retrain"
    result, source = _train_once(entry, spec, retrain_id, split, dataset, context, log, timing,
                                 epochs=chosen and chosen["epoch"])
    if chosen is not None:
        result["selection"] = {**chosen, "rule": "best_val_map_then_retrain"}
        if not context.request.keep_checkpoints:  # the retrain is done: nothing to resume
            checkpoints.discard(context.request.out, retrain_id)
    return result, source, split


def _execute(entry, spec, run_id, dataset, context, log: RunLog) -> dict:
    started = time.time()
    record, timing = new_record(entry, spec, run_id), RunTiming()
    folder = partial_folder(context.request.out, run_id)  # published once the row is stored
    try:
        with timing.step("data"):
            split = split_for(spec, context)
        record["protocol"] = dict(spec["protocol"], materialised=split.facts)
        result, source, split = reported_run(entry, spec, run_id, split, dataset, context, log,
                                             timing)
        record["provenance"]["device"] = device_label(source.device)
        for key in ("resumed_after_epoch", "train_images_per_s", "lr"):
            if key in result:
                record["provenance"][key] = result[key]
        log.facts("selection", result["selection"])
        codes = result["codes"]
        with timing.step("evaluate"):
            record["metrics"], pr = evaluate(dataset, split, codes)
            if result["real"] is not None:
                record["metrics"]["map_real"] = map_real_valued(
                    result["real"]["query"], result["real"]["db"], codes["query_labels"], codes["db_labels"])
        if result["skipped_images"]:
            record["metrics"]["skipped_images"] = result["skipped_images"]
        record["provenance"]["selection"] = result["selection"]
        if result["asymmetric"]:  # database codes from encode_database (absent: symmetric)
            record["provenance"]["asymmetric"] = True
        record["provenance"]["load_average"] = round(os.getloadavg()[0], 2)  # while timing
        with timing.step("profile"):
            record["efficiency"] = profile_run(result["method"], result["input_shapes"], spec["backbone"],
                                               spec["input_size"], codes["db_codes"], codes["query_codes"],
                                               result["real"], profile_key(spec, dataset))
        record["provenance"].update(epochs=result["epochs"], loss_history=result["history"])
        record["health"] = health(result["history"], codes["db_codes"], codes["db_labels"],
                                  spec["bits"])
        with timing.step("store"):
            save_codes(folder, codes)
            if pr is not None:
                save_pr_curve(folder, pr)
    except Exception as exc:  # noqa: BLE001 - a failing plugin must not stop the grid
        record.update(status="failed", error=one_line(exc), metrics={}, efficiency={})
        log.failure(exc)
    record["provenance"]["timing"] = timing.facts()  # seconds per step (run/timing.py)
    record["wall_time"] = round(time.time() - started, 3)
    return record
