"""Conformance kit: does a method honour the contract of :mod:`benchmark.method`?

Every check runs on tiny synthetic tensors of the shapes the method declares (no images,
no backbone): ``PROBE_CLASSES`` classes, each a random prototype per input plus noise, so
a method can learn something in a few steps. The harness's own code paths are used
(``run.method_run.run_method`` trains or fits, encodes and binarises exactly as a real run
does; the probe data is in :mod:`.probe`).

A check is a function ``check(method)`` where ``method`` is a method class or the name of
a registered method; it returns a one-line detail on success and raises
:class:`ConformanceError` (an ``AssertionError``) with the reason on failure.

Command line: ``python -m benchmark check-plugin NAME`` (a method or an entry-point name).
In a plugin author's pytest suite (like scikit-learn's ``parametrize_with_checks``)::

    from benchmark.conformance import parametrize_with_checks
    from my_package.mine import Mine

    @parametrize_with_checks([Mine])
    def test_conformance(method, check):
        check(method)
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch

from registry import load_plugins
from registry.loading import one_line

from ..eval.metrics import evaluate_codes, map_real_valued
from ..eval.profiling import count_macs, count_params
from ..method import INPUT_NAMES, HashMethod
from ..run.encode import encode_all
from ..run.loop import build_optimizer, overrides, seed_everything
from .probe import (PROBE_BITS, PROBE_CLASSES, PROBE_SEED, PROBE_STEPS, ConformanceError,
                    PROBE_IS_TRAIN, PROBE_LABELS, probe_batch, probe_features, probe_input_shapes,
                    probe_run, resolve_method, started_model)
from .behaviour import BEHAVIOUR_CHECKS
from .hooks import check_database_hook


@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    detail: str


class _EncodePath(torch.nn.Module):
    """Positional-tensor wrapper around ``encode`` for the MAC counter's tracer."""

    def __init__(self, method, names):
        super().__init__()
        self.method, self.names = method, list(names)

    def forward(self, *tensors):
        return self.method.encode(dict(zip(self.names, tensors)))


# ----------------------------------------------------------------------------- the checks

def check_entry_point(method) -> str:
    """The name resolves, through a ``benchmark.methods`` entry point, to a HashMethod
    subclass carrying that name, from an installed distribution with a version."""
    if not isinstance(method, str):
        raise ConformanceError("give a registered name to check its entry point")
    plugins = load_plugins()
    entry = plugins.methods.get(method)
    if entry is None:
        resolve_method(method)  # raises with the plugin's failure or "no registered method"
    if not (inspect.isclass(entry.cls) and issubclass(entry.cls, HashMethod)):
        raise ConformanceError(f"entry point {entry.plugin!r} gave {entry.cls!r}, "
                               f"not a HashMethod subclass")
    if entry.cls.name != method:
        raise ConformanceError(f"class name {entry.cls.name!r} differs from {method!r}")
    if "unknown" in (entry.distribution, entry.version):
        raise ConformanceError(f"entry point {entry.plugin!r} has no distribution metadata "
                               f"(install the package so its dist-info exists)")
    return (f"entry point {entry.plugin!r} -> {entry.cls.__module__}.{entry.cls.__qualname__} "
            f"({entry.distribution} {entry.version})")


def check_contract(method) -> str:
    """Class attributes are well-formed and the class builds with the harness's arguments."""
    cls = resolve_method(method)
    if not (inspect.isclass(cls) and issubclass(cls, HashMethod)):
        raise ConformanceError(f"{cls!r} is not a subclass of benchmark.method.HashMethod")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or any(c in name for c in ", \t\n"):
        raise ConformanceError(f"`name` must be a non-empty string without commas or spaces, "
                               f"got {name!r}")
    for flag in ("supervised", "trainable"):
        if not isinstance(getattr(cls, flag), bool):
            raise ConformanceError(f"`{flag}` must be a bool, got {getattr(cls, flag)!r}")
    if cls.inputs not in INPUT_NAMES:
        raise ConformanceError(f"`inputs` is {cls.inputs!r}; supported: {', '.join(INPUT_NAMES)}")
    if not overrides(cls, "encode"):
        raise ConformanceError("`encode` is not implemented")
    if cls.trainable:
        config = cls.train_config
        if not isinstance(config, dict) or not {"epochs", "batch_size", "optimizer"} <= set(config):
            raise ConformanceError("`train_config` needs epochs, batch_size and optimizer")
        if not (isinstance(config["epochs"], int) and config["epochs"] >= 1):
            raise ConformanceError(f"train_config epochs must be an int >= 1, got {config['epochs']!r}")
        if not (isinstance(config["batch_size"], int) and config["batch_size"] >= 2):
            raise ConformanceError(f"train_config batch_size must be an int >= 2, "
                                   f"got {config['batch_size']!r}")
        if not overrides(cls, "loss"):
            raise ConformanceError("trainable but `loss` is not implemented")
    elif not overrides(cls, "fit"):
        raise ConformanceError("closed-form (trainable = False) but `fit` is not implemented")
    try:
        instance = cls(bits=PROBE_BITS[0], num_classes=PROBE_CLASSES, input_shapes=probe_input_shapes(cls))
    except Exception as exc:  # noqa: BLE001
        raise ConformanceError(f"cls(bits=, num_classes=, input_shapes=) raised {one_line(exc)}")
    if cls.trainable:
        if not any(p.requires_grad for p in instance.parameters()):
            raise ConformanceError("trainable but has no parameters requiring grad")
        try:
            build_optimizer(instance, cls.train_config["optimizer"])
        except Exception as exc:  # noqa: BLE001
            raise ConformanceError(f"train_config optimizer: {one_line(exc)}")
    kind = "trainable" if cls.trainable else "closed-form"
    return (f"{kind}, {'supervised' if cls.supervised else 'unsupervised'}, "
            f"inputs {cls.inputs!r}")


def check_parameters_reported(method) -> str:
    """The profiler counts the method's parameters and traces its encode path for MACs."""
    cls = resolve_method(method)
    trained = probe_run(cls, PROBE_BITS[0])["method"]
    params = count_params(trained, buffers=True)
    if params <= 0:
        raise ConformanceError("the method holds no parameters or buffers to report")
    shapes = probe_input_shapes(cls)
    example = tuple(torch.zeros((1,) + shapes[n]) for n in shapes)
    trained.eval()
    try:
        with torch.no_grad():
            macs = count_macs(_EncodePath(trained, shapes), example)
    except Exception as exc:  # noqa: BLE001
        raise ConformanceError(f"MAC counting of encode failed: {one_line(exc)}")
    if macs <= 0:
        raise ConformanceError("encode reports 0 MACs: its work is invisible to the profiler "
                               "(computed outside torch?)")
    return f"{params:,} parameters + buffers, {macs:,} MACs per sample in encode"


def _untrained_encode(cls, bits: int):
    """Build at ``bits`` (closed-form methods are fitted, trainable ones left untrained) and
    encode the probe queries through the harness's ``encode_all``."""
    seed_everything(PROBE_SEED)
    names = INPUT_NAMES[cls.inputs]
    method = cls(bits=bits, num_classes=PROBE_CLASSES, input_shapes=probe_input_shapes(cls))
    if not cls.trainable:
        train_index = np.flatnonzero(PROBE_IS_TRAIN)
        with torch.no_grad():
            method.eval().fit(probe_features().select(names, train_index),
                              torch.from_numpy(PROBE_LABELS[train_index]) if cls.supervised else None)
    return encode_all(method, probe_features().select(names, np.flatnonzero(~PROBE_IS_TRAIN)))


def check_codes_shape_and_binarised(method) -> str:
    """``encode`` gives finite real values of shape (N, bits); the harness turns them into
    0/1 uint8 codes, which after the probe run are not all the same. Checked on the trained
    probe run at the first probed bit length and untrained at the others."""
    cls = resolve_method(method)
    run = probe_run(cls, PROBE_BITS[0])
    query = probe_features().select(INPUT_NAMES[cls.inputs], np.flatnonzero(~PROBE_IS_TRAIN))
    with torch.no_grad():
        values = run["method"].eval().encode(query)
    if not (isinstance(values, torch.Tensor) and values.is_floating_point()):
        raise ConformanceError(f"encode must return a float tensor, got "
                               f"{getattr(values, 'dtype', type(values))}")
    codes_by_bits = {PROBE_BITS[0]: [run["codes"]["query_codes"], run["codes"]["db_codes"]]}
    for bits in PROBE_BITS[1:]:
        try:
            codes_by_bits[bits] = [_untrained_encode(cls, bits)]
        except Exception as exc:  # noqa: BLE001
            raise ConformanceError(f"at {bits} bits: {one_line(exc)}")
    for bits, arrays in codes_by_bits.items():
        for codes in arrays:
            if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != bits \
                    or not set(np.unique(codes)) <= {0, 1}:
                raise ConformanceError(f"harness codes are {codes.dtype} {codes.shape}, "
                                       f"expected 0/1 uint8 (N, {bits})")
    if len(np.unique(run["codes"]["db_codes"], axis=0)) == 1:
        raise ConformanceError(f"after the probe run every sample gets the same "
                               f"{PROBE_BITS[0]}-bit code")
    return f"(N, bits) float -> 0/1 codes at bits {', '.join(map(str, PROBE_BITS))}"


def check_real_valued(method) -> str:
    """The optional ``real_valued`` feature, when a method has one, is a finite float (N, D)
    array for the same N samples as the codes, and is evaluated (``map_real``)."""
    cls = resolve_method(method)
    run = probe_run(cls, PROBE_BITS[0])
    real = run.get("real")
    if real is None:
        return "none (optional)"
    n_db, n_query = len(run["codes"]["db_codes"]), len(run["codes"]["query_codes"])
    for side, rows in (("db", n_db), ("query", n_query)):
        values = real[side]
        if values.ndim != 2 or len(values) != rows or not np.isfinite(values).all():
            raise ConformanceError(f"real_valued must give finite (N, D) features; the "
                                   f"{side} side has shape {values.shape}, expected ({rows}, D)")
    codes = run["codes"]
    score = map_real_valued(real["query"], real["db"], codes["query_labels"], codes["db_labels"])
    return f"(N, {real['db'].shape[1]}) features, cosine mAP {score:.3f}"


def check_encode_without_labels(method) -> str:
    """``encode`` takes only the declared inputs (no labels), in eval mode, and each sample's
    output does not depend on the rest of its batch or on earlier calls."""
    cls = resolve_method(method)
    trained = probe_run(cls, PROBE_BITS[0])["method"].eval()
    names = INPUT_NAMES[cls.inputs]
    inputs = probe_features().select(names, np.flatnonzero(~PROBE_IS_TRAIN))
    try:
        with torch.no_grad():
            batch = trained.encode(dict(inputs))
            single = torch.cat([trained.encode({n: v[i:i + 1] for n, v in inputs.items()})
                                for i in range(2)])
            again = trained.encode(dict(inputs))
    except Exception as exc:  # noqa: BLE001
        raise ConformanceError(f"encode(inputs without labels) raised {one_line(exc)}")
    scale = float(batch.abs().max()) or 1.0
    if not torch.allclose(batch[:2], single, atol=1e-4 * scale, rtol=1e-4):
        raise ConformanceError("a sample's output changes with the rest of its batch "
                               "(batch statistics in eval mode?)")
    if not torch.equal(batch, again):
        raise ConformanceError("encoding the same batch twice gives different outputs")
    return f"batch of {len(batch)} and single samples agree; inputs {list(names)}"


def check_same_seed_same_codes(method) -> str:
    """Two runs with the same seed give byte-identical codes."""
    cls = resolve_method(method)
    first = probe_run(cls, PROBE_BITS[0])["codes"]
    second = probe_run(cls, PROBE_BITS[0], fresh=True)["codes"]
    for key in ("query_codes", "db_codes"):
        if not np.array_equal(first[key], second[key]):
            differ = int((first[key] != second[key]).sum())
            raise ConformanceError(f"seed {PROBE_SEED}: {key} differ in {differ} bits between "
                                   f"two runs (unseeded randomness?)")
    return f"seed {PROBE_SEED}, {PROBE_BITS[0]} bits: identical codes in two runs"


def _total_loss(method, batch) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(PROBE_SEED)  # the same dropout masks for every evaluation
    losses = method.loss(batch)
    if not isinstance(losses, dict) or not losses:
        raise ConformanceError(f"loss must return a non-empty dict, got {type(losses).__name__}")
    for key, value in losses.items():
        if not (isinstance(value, torch.Tensor) and value.ndim == 0):
            raise ConformanceError(f"loss term {key!r} is not a scalar tensor")
        if not torch.isfinite(value):
            raise ConformanceError(f"loss term {key!r} is {float(value)}")
    return losses, sum(losses.values())


def check_losses_finite_and_decreasing(method) -> str:
    """``loss(batch)`` returns a dict of finite scalar tensors, at least one with a
    gradient, and ``PROBE_STEPS`` steps of the method's own optimiser on one fixed batch
    lower their sum (after ``on_epoch_start(0, data)``; closed-form: not applicable). The
    probe run's epoch losses must be finite too."""
    cls = resolve_method(method)
    if not cls.trainable:
        return "not applicable: closed-form method (fit)"
    history = probe_run(cls, PROBE_BITS[0])["history"]
    if any(h is None or not math.isfinite(h) for h in history):
        raise ConformanceError(f"non-finite epoch loss in the probe run: {history}")
    model = started_model(cls)
    batch = probe_batch(cls)
    optimizer = build_optimizer(model, cls.train_config["optimizer"])
    losses, first = _total_loss(model, batch)
    if not any(v.requires_grad for v in losses.values()):
        raise ConformanceError("no loss term requires grad")
    total = first
    for _ in range(PROBE_STEPS):
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        _, total = _total_loss(model, batch)
    before, after = first.item(), total.item()
    if not after < before:
        raise ConformanceError(f"loss did not decrease over {PROBE_STEPS} steps on one batch: "
                               f"{before:.6g} -> {after:.6g}")
    return f"terms {sorted(losses)}; loss {before:.4g} -> {after:.4g} in {PROBE_STEPS} steps"


#: epochs of the probe run that must beat LSH (the shared probe run trains for 2, too few
#: steps on 32 samples for most methods to separate 4 classes)
BEATS_LSH_EPOCHS = 10


def _probe_map(codes: dict) -> float:
    return evaluate_codes(codes["query_codes"], codes["db_codes"], codes["query_labels"],
                          codes["db_labels"])["map_tie_aware"]


def _lsh_probe_map(bits: int) -> float:
    """Tie-aware mAP of LSH (sign of seeded Gaussian projections of the mean-centred pooled
    probe feature, Charikar 2002) on the probe data: the floor a learned code must clear."""
    train, query = np.flatnonzero(PROBE_IS_TRAIN), np.flatnonzero(~PROBE_IS_TRAIN)
    db = probe_features().select(["pooled"], train)["pooled"]
    queries = probe_features().select(["pooled"], query)["pooled"]
    projection = torch.randn(db.shape[1], bits, generator=torch.Generator().manual_seed(PROBE_SEED))
    mean = db.mean(0)
    codes = {"db_codes": ((db - mean) @ projection >= 0).numpy().astype(np.uint8),
             "query_codes": ((queries - mean) @ projection >= 0).numpy().astype(np.uint8),
             "db_labels": PROBE_LABELS[train], "query_labels": PROBE_LABELS[query]}
    return _probe_map(codes)


def check_beats_lsh(method) -> str:
    """A trainable supervised method, trained ``BEATS_LSH_EPOCHS`` epochs on the probe data,
    gets a higher tie-aware mAP at ``PROBE_BITS[0]`` bits than LSH on the same data
    (closed-form or unsupervised methods: not applicable)."""
    cls = resolve_method(method)
    if not (cls.trainable and cls.supervised):
        return "not applicable: " + ("closed-form" if not cls.trainable else "unsupervised") + " method"
    bits = PROBE_BITS[0]
    found = _probe_map(probe_run(cls, bits, fresh=True, epochs=BEATS_LSH_EPOCHS)["codes"])
    floor = _lsh_probe_map(bits)
    if not found > floor:
        raise ConformanceError(f"after {BEATS_LSH_EPOCHS} probe epochs, mAP (tie-aware) "
                               f"{found:.3f} does not beat LSH's {floor:.3f} at {bits} bits")
    return f"mAP (tie-aware) {found:.3f} > LSH {floor:.3f} at {bits} bits"


CHECKS = (check_contract, check_parameters_reported, check_codes_shape_and_binarised,
          check_real_valued, check_encode_without_labels, check_same_seed_same_codes,
          check_losses_finite_and_decreasing, check_database_hook, check_beats_lsh) + BEHAVIOUR_CHECKS


def checks_for(method) -> tuple:
    """The checks that apply: all of them, plus the entry-point check for a name."""
    return ((check_entry_point,) if isinstance(method, str) else ()) + CHECKS


def check_name(check) -> str:
    return check.__name__.removeprefix("check_")


def run_checks(method) -> list[CheckResult]:
    """Run every applicable check; a failing contract check skips the rest."""
    results = []
    for check in checks_for(method):
        try:
            results.append(CheckResult(check_name(check), True, check(method)))
        except ConformanceError as exc:
            results.append(CheckResult(check_name(check), False, str(exc)))
            if check in (check_entry_point, check_contract):
                break
        except Exception as exc:  # noqa: BLE001 - a check must report, never crash the kit
            results.append(CheckResult(check_name(check), False, one_line(exc)))
    return results


def methods_of(name: str) -> list[str]:
    """A method name, or an entry-point name -> the method names it provides."""
    plugins = load_plugins()
    if name in plugins.methods:
        return [name]
    provided = [m for m, e in plugins.methods.items() if e.plugin == name]
    return provided or [name]


def parametrize_with_checks(methods):
    """``pytest.mark.parametrize("method, check", ...)`` over every method x check.

    ``methods`` holds method classes or registered names (names add the entry-point check).
    """
    import pytest

    params, ids = [], []
    for method in methods:
        label = method if isinstance(method, str) else getattr(method, "name", "") or method.__name__
        for check in checks_for(method):
            params.append((method, check))
            ids.append(f"{label}-{check_name(check)}")
    return pytest.mark.parametrize("method, check", params, ids=ids)
