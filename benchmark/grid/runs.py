"""The grid: a request expanded into run specs, each identified by a hash of its spec.

A run's identity is a hash of its resolved spec: the method, its plugin distribution and
version, a digest of its code (``code``, :mod:`.digest`), its resolved hyperparameters
(``hparams``: constructor keywords with defaults filled in) and effective training config
(``train``: epochs, batch size, optimiser; None for closed-form methods), the selection
rule of a tuned config (``selection``, when given), the evaluation-protocol version
(``eval_protocol``), the dataset fingerprint, regime, backbone and its weights, input
size, protocol, bits and seed, a finetune run's ``precision`` and a tuning trial's mark
(``tuning``, ``benchmark.tune``; such runs never reach a leaderboard). Editing a default or a
loss therefore makes a new run. The device is recorded (``provenance.device``) but not part
of the identity: a GPU and the CPU compute the same run up to floating-point rounding.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from registry import load_plugins
from registry.loading import MethodEntry
from registry.names import check_name

from ..errors import BenchmarkError
from ..features.backbones import weights_spec
from ..method import HashMethod
from .config import MethodSettings, resolve, variant_class
from .digest import code_digest
from .request import GridRequest
from .splitfile import check_dataset

#: bumped when the harness changes what a run computes (training loop, encoding,
#: evaluation); part of every run id
EVAL_PROTOCOL = 1


def _variant_entries(settings: MethodSettings, methods: dict) -> dict[str, MethodEntry]:
    """The config file's variants as registry entries (a base may be an earlier variant)."""
    known = dict(methods)
    out = {}
    for variant in settings.variants:
        name, base = str(variant["name"]), str(variant["base"])
        check_name(f"{settings.source}: variant", name)  # registry.names: safe in tables and paths
        if name in known:
            raise BenchmarkError(f"{settings.source}: variant {name!r} is already a method")
        if base not in known:
            raise BenchmarkError(f"{settings.source}: variant {name!r}: unknown base method {base!r}")
        origin = known[base]
        cls = variant_class(origin.cls, name, dict(variant.get("hparams") or {}))
        known[name] = out[name] = MethodEntry(name, cls, origin.plugin, origin.distribution,
                                              origin.version)
    return out


@dataclass(frozen=True)
class UnloadedMethod(MethodEntry):
    """A method named by a plugin (entry point) that failed to load: every run of it is
    recorded ``failed`` with ``error`` and the rest of the grid runs. ``cls`` is a bare
    ``HashMethod`` stand-in carrying the name."""
    error: str = ""


def _unloaded(name: str, failure) -> UnloadedMethod:
    stand_in = type(f"Unloaded_{failure.plugin}", (HashMethod,), {"name": name, "__module__": __name__})
    return UnloadedMethod(name, stand_in, failure.plugin, failure.distribution, failure.version,
                          f"plugin {failure.plugin!r} failed to load: {failure.reason}")


def resolve_methods(names: list[str], settings: MethodSettings | None = None):
    """The registry entries of ``names`` (and of ``settings``' variants): an
    :class:`UnloadedMethod` for the name of a plugin that failed to load; a one-line error
    for an unknown method, or settings for a method that is not known."""
    plugins = load_plugins()
    settings = settings or MethodSettings()
    methods = {**plugins.methods, **_variant_entries(settings, plugins.methods)}
    failed = {f.plugin: f for f in plugins.failures}
    for name in sorted(set(settings.hparams) - set(methods)):
        raise BenchmarkError(f"hyperparameters for unknown method {name!r}")
    for name in sorted(settings.cli_methods - set(names)):
        raise BenchmarkError(f"--hparams sets {name!r}, which is not among --methods")
    entries = []
    for name in names:
        if name in methods:
            entries.append(methods[name])
        elif name in failed:
            entries.append(_unloaded(name, failed[name]))
        else:
            known = ", ".join(methods) or "(none)"
            raise BenchmarkError(f"unknown method {name!r}; registered methods: {known}")
    for entry in entries:  # wrong names, types or ranges: refused before any data is read
        if not isinstance(entry, UnloadedMethod):
            resolve(entry.cls, entry.name, settings)
    return entries


def run_id_of(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def method_spec(entry, resolved) -> dict:
    """The method's part of a spec: origin, code digest, resolved settings."""
    spec = {"method": entry.name, "plugin": entry.plugin, "distribution": entry.distribution,
            "version": entry.version,
            "code": None if isinstance(entry, UnloadedMethod) else code_digest(entry.cls),
            "hparams": resolved.hparams, "train": resolved.train,
            "eval_protocol": EVAL_PROTOCOL}
    if resolved.selection:
        spec["selection"] = resolved.selection
    return spec


def regime_settings(settings: MethodSettings, cls, name: str, regime: str) -> MethodSettings:
    """``settings`` with the method's defaults for ``regime`` (``HashMethod.regime_hparams``)
    under the values the user set."""
    defaults = (getattr(cls, "regime_hparams", None) or {}).get(regime)
    if not defaults:
        return settings
    hparams = {**settings.hparams, name: {**defaults, **settings.hparams.get(name, {})}}
    return dataclasses.replace(settings, hparams=hparams)


def expand(request: GridRequest, entries, dataset, settings: MethodSettings | None = None) -> list[tuple]:
    """(entry, spec, run id) for every method x protocol x bits x seed of the request."""
    settings = settings or request.method_settings()
    if request.protocol_file:  # a split file made for other data: refused before any run
        check_dataset(request.protocol_file, dataset)
    grid = []
    for entry in entries:
        own = regime_settings(settings, entry.cls, entry.name, request.regime)
        method = method_spec(entry, resolve(entry.cls, entry.name, own))
        if settings.tuning:
            method["tuning"] = settings.tuning
        for protocol in request.protocols():
            for bits in request.bits:
                for seed in request.seeds:
                    spec = {**method, "dataset": dataset.name, "data": dataset.fingerprint(),
                            "regime": request.regime, "backbone": request.backbone,
                            "input_size": request.input_size, "protocol": protocol.spec(),
                            "bits": bits, "seed": seed}
                    if request.backbone_weights:  # a checkpoint's hash, or "random init"
                        spec["backbone_weights"] = weights_spec(request.backbone_weights)
                    if request.regime == "finetune":  # bf16/fp16 change the numbers by design
                        spec["precision"] = request.precision
                    if request.on_bad_image != "fail":  # absent at the default: ids unchanged
                        spec["on_bad_image"] = request.on_bad_image
                    spec = json.loads(json.dumps(spec))  # as the store gives it back
                    grid.append((entry, spec, run_id_of(spec)))
    return grid
