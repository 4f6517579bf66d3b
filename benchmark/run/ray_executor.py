"""``run --executor ray``: each run of the grid is one Ray task.

A task declares ``RUN_CPUS`` CPU (and runs torch with that many threads) plus one GPU for a
finetune run when the cluster has GPUs. Before any task starts, the driver extracts the
features of every (dataset, transform, backbone) the runs need into the cache folder and
materialises every (protocol, seed) (:func:`prepare`); tasks open the cached features
from that folder (on a cluster, a folder every node sees) and receive the splits.

The driver is the only writer of the SQLite store and of the run folders: a task runs
:func:`~benchmark.run.execute.execute` into a scratch folder of its own and returns the
record with the bytes of the files the run wrote (codes, precision-recall, log), which the
driver writes into the run's partial folder before it stores the row and publishes the
folder. So files, row and publication happen in the same order, in the same process, as
with the local executor: ``--overwrite``, resume and the clean-up of a killed grid
(:mod:`.folders`) work unchanged, no two processes ever write one SQLite file, and only
the cache (not the results folder) must be shared between nodes.

Faults: a task whose worker process dies (killed, out of memory, node lost) is submitted
once more and the record's ``provenance.attempts`` says how many attempts it took; an
exception inside a plugin is a failed record (``execute``) and is not retried. A killed
driver stores nothing more: in-flight runs have no row, and the next ``run`` resumes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path

import ray
import torch

from registry.loading import one_line

from ..errors import BenchmarkError
from ..features.cache import open_features
from .execute import execute, frozen_factors, new_record
from .folders import partial_folder

RUN_CPUS = 1
MAX_ATTEMPTS = 2  # the first and one retry after a lost worker


def split_key(protocol: dict, seed: int) -> str:
    return json.dumps([protocol, seed], sort_keys=True)


def _outcome(compute):
    """``compute()``, or the exception it raised (raised again in each run that needs it)."""
    try:
        return compute()
    except Exception as exc:  # noqa: BLE001 - becomes the failed record of those runs
        return exc


class TaskContext:
    """What a task needs of the driver's ``RunContext``: the request, the cache folder of
    the features per downsampling factor and the split per (protocol, seed), or the error
    each gave in the driver."""

    def __init__(self, request, features: dict, splits: dict):
        self.request, self._features, self._splits = request, features, splits
        self._opened: dict = {}

    def __getstate__(self):
        return dict(vars(self), _opened={})  # memory maps are opened where the task runs

    def at(self, out: Path) -> "TaskContext":
        """The same context with results going to ``out`` (the task's scratch folder)."""
        return TaskContext(dataclasses.replace(self.request, out=out), self._features, self._splits)

    def features(self, factor: float = 1):
        value = self._features[factor]
        if isinstance(value, Exception):
            raise value
        if factor not in self._opened:
            self._opened[factor] = open_features(Path(value), self.request.on_bad_image)
        return self._opened[factor]

    def split(self, protocol: dict, seed: int):
        value = self._splits[split_key(protocol, seed)]
        if isinstance(value, Exception):
            raise value
        return value

    def log(self, message: str) -> None:
        print(message)


PATH_FIELDS = ("data_root", "cache_dir", "backbone_weights", "config", "protocol_file")


def absolute(request):
    """The request with its file and folder flags absolute (tasks run in other folders)."""
    paths = {name: type(value)(Path(value).expanduser().resolve()) for name in PATH_FIELDS
             if isinstance(value := getattr(request, name, None), (str, Path))
             and Path(value).expanduser().exists()}
    return dataclasses.replace(request, **paths)


def prepare(todo, context) -> TaskContext:
    """Extract every feature set and materialise every protocol the runs need (driver)."""
    features, splits = {}, {}
    for entry, spec, _ in todo:
        if context.request.regime == "frozen":
            for factor in frozen_factors(entry.cls, spec["protocol"]):
                if factor not in features:
                    features[factor] = _outcome(lambda: str(context.features(factor).path.resolve()))
        key = split_key(spec["protocol"], spec["seed"])
        if key not in splits:
            splits[key] = _outcome(lambda: context.split(spec["protocol"], spec["seed"]))
    return TaskContext(absolute(context.request), features, splits)


@ray.remote
def run_task(entry, spec: dict, run_id: str, dataset, context: TaskContext):
    """One run on a worker: (record, {relative path: bytes} of the files it wrote)."""
    torch.set_num_threads(RUN_CPUS)
    scratch = Path(tempfile.mkdtemp(prefix="fghashbench-task-"))
    try:
        record = execute(entry, spec, run_id, dataset, context.at(scratch))
        folder = partial_folder(scratch, run_id)
        files = {str(p.relative_to(folder)): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()} if folder.is_dir() else {}
        return record, files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one running here) or start a
    local one with this machine's CPUs; True when this call started a Ray session."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    options = {"address": address} if address else {"address": "local", "include_dashboard": False}
    try:
        ray.init(**options, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BenchmarkError(f"--ray-address {address or '(local)'}: cannot start or join "
                             f"Ray ({one_line(exc)})") from None
    return True


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ``HOST:PORT`` address must accept a connection (``ray.init`` would wait for it for
    minutes); ``auto`` and ``ray://`` addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BenchmarkError(f"--ray-address {address}: no Ray cluster answers there "
                             f"({one_line(exc)}); start one with `ray start --head`") from None


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _result(ref, entry, spec, run_id, attempt: int, started: float):
    """(record, files) of a finished task; None when its worker died and it may retry."""
    try:
        record, files = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # raised outside execute's own handling
        record, files = new_record(entry, spec, run_id), {}
        record.update(status="failed", error=one_line(exc.cause or exc))
    except ray.exceptions.RayError as exc:  # the worker process (or its node) was lost
        if attempt < MAX_ATTEMPTS:
            return None
        record, files = new_record(entry, spec, run_id), {}
        record.update(status="failed", error=one_line(exc))
    record.setdefault("wall_time", round(time.time() - started, 3))
    record["provenance"].update(executor="ray", attempts=attempt)
    return record, files


def run_on_ray(todo, dataset, context, begin, bar):
    """(entry, spec, run id, record) of each run as its task finishes, its files in its
    partial folder (the driver then stores the row and publishes the folder).
    ``begin(entry, spec, run_id)`` is called as a run is submitted (the driver's claim;
    False: skip it); at most ``--max-parallel`` runs (default: the cluster's CPUs per
    ``RUN_CPUS``) are submitted at a time, so processes sharing a results folder still
    split the grid."""
    request = context.request
    started_here = connect(request.ray_address)
    pending: dict = {}
    try:
        shared = ray.put(prepare(todo, context))
        images = ray.put(dataset)
        gpus = 1 if request.regime == "finetune" and ray.cluster_resources().get("GPU", 0) else 0
        task = run_task.options(num_cpus=RUN_CPUS, num_gpus=gpus, max_retries=0,
                                retry_exceptions=False)
        waiting = list(reversed(todo))
        limit = request.max_parallel or max(1, int(ray.cluster_resources().get("CPU", 1) // RUN_CPUS))
        while waiting or pending:
            while waiting and len(pending) < limit:
                item = waiting.pop()
                if begin(*item):
                    pending[task.remote(*item, images, shared)] = (item, 1, time.time())
                else:
                    bar.update()
            if not pending:
                break
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            item, attempt, started = pending.pop(ref)
            outcome = _result(ref, *item, attempt, started)
            if outcome is None:
                pending[task.remote(*item, images, shared)] = (item, attempt + 1, started)
                continue
            record, files = outcome
            write_files(partial_folder(request.out, item[2]), files)
            bar.update()
            yield (*item, record)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
