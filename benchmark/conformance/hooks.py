"""Conformance checks of the optional hooks with a harness-side contract (one module, so
``checks`` stays small): ``encode_database`` (asymmetric database codes)."""
from __future__ import annotations

import numpy as np
import torch

from ..eval.metrics import binarise
from ..method import INPUT_NAMES
from ..run.loop import overrides
from ..run.method_run import state_digest
from .probe import PROBE_BITS, PROBE_IS_TRAIN, ConformanceError, probe_features, probe_run, resolve_method


def check_database_hook(method) -> str:
    """The optional ``encode_database(inputs, indices)``, when a method has one: the trained
    probe run (database = training split) takes its database codes from it (the harness
    checks they are finite (N, bits) values); it gives float tensors; it is asked for
    training positions only, and a position's row does not depend on the other positions
    asked for (a subset in another order gives the same rows); calling it changes neither
    the model (hash of parameters and buffers) nor what ``encode`` gives the queries."""
    cls = resolve_method(method)
    if not overrides(cls, "encode_database"):
        return "none (optional)"
    run = probe_run(cls, PROBE_BITS[0])
    if not run["asymmetric"]:
        return "returns None: the database is encoded with encode"
    trained = run["method"].eval()
    names = INPUT_NAMES[cls.inputs]
    train_index = np.flatnonzero(PROBE_IS_TRAIN)
    inputs = probe_features().select(names, train_index)
    queries = probe_features().select(names, np.flatnonzero(~PROBE_IS_TRAIN))
    n = len(train_index)
    picked = torch.tensor([n - 1, 0, n // 2])
    with torch.no_grad():
        before, digest = trained.encode(dict(queries)), state_digest(trained)
        values = trained.encode_database(dict(inputs), torch.arange(n))
        subset = trained.encode_database({k: v[picked] for k, v in inputs.items()}, picked)
        after = trained.encode(dict(queries))
    if not all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in (values, subset)):
        raise ConformanceError(f"encode_database must return a float tensor or None, got "
                               f"{getattr(values, 'dtype', type(values))}")
    if not np.array_equal(binarise(values), run["codes"]["db_codes"]):
        raise ConformanceError("called again, encode_database gives other database codes")
    if not torch.equal(subset, values[picked]):
        raise ConformanceError("encode_database rows change with the other positions asked for")
    if state_digest(trained) != digest or not torch.equal(before, after):
        raise ConformanceError("calling encode_database changed the model or the query codes")
    return f"({n}, {run['codes']['db_codes'].shape[1]}) database codes for training positions; " \
           f"query encoding unaffected"
