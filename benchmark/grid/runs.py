"""The grid: a request expanded into run specs, each identified by a hash of its spec.

A run's identity is a hash of its resolved spec (method + its plugin version and hparams,
dataset fingerprint, regime, backbone and its weights, input size, protocol, bits, seed,
epochs).
"""
from __future__ import annotations

import hashlib
import json

from registry import load_plugins

from ..errors import BenchmarkError
from ..features.backbones import file_sha256
from .request import GridRequest


def resolve_methods(names: list[str]):
    """The registry entries of ``names``; a one-line error for an unknown or broken one."""
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


def expand(request: GridRequest, entries, dataset) -> list[tuple]:
    """(entry, spec, run id) for every method x protocol x bits x seed of the request."""
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
    return grid
