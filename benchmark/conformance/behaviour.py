"""Behavioural checks of the conformance kit: what a trained probe run's codes and model
must show beyond the contract's shapes. Each check takes a method class or registered
name, returns a one-line detail and raises :class:`ConformanceError` on failure (the
conventions of :mod:`.checks`)."""
from __future__ import annotations

import numpy as np
import torch

from ..eval.metrics import evaluate_codes
from ..method import INPUT_NAMES
from ..run.loop import seed_everything
from .probe import (PROBE_BITS, PROBE_CLASSES, PROBE_EPOCHS, PROBE_IS_TRAIN, PROBE_LONG_EPOCHS,
                    PROBE_SEED, ConformanceError,
                    probe_batch, probe_features, probe_input_shapes, probe_run, resolve_method,
                    shuffled_probe_labels, started_model)

#: at most this fraction of a side's bits may be the same in every code
MAX_CONSTANT_BITS = 0.5
#: the probe run's tie-aware mAP must exceed chance (every code equal) by this much
CHANCE_MARGIN = 0.1
#: a sample's output alone and inside batches may differ by this (relative to the largest)
BATCH_TOLERANCE = 1e-5


def _sides(codes: dict) -> dict[str, np.ndarray]:
    return {"query": codes["query_codes"], "database": codes["db_codes"]}


def _constant_bits(codes: dict) -> tuple[int, str | None]:
    """(bits constant over queries and database, the first side where they all are)."""
    sides = _sides(codes)
    both = np.concatenate(list(sides.values()))
    counts = {side: int((a.min(0) == a.max(0)).sum()) for side, a in sides.items()}
    return int((both.min(0) == both.max(0)).sum()), next(
        (side for side, n in counts.items() if n == both.shape[1]), None)


def check_bits_vary(method) -> str:
    """In the probe run at most ``MAX_CONSTANT_BITS`` of the bits take the same value in
    every query and database code, and no side has every bit constant; a method failing
    this after ``PROBE_EPOCHS`` gets a run of ``PROBE_LONG_EPOCHS`` (a slow start)."""
    cls = resolve_method(method)
    limit = MAX_CONSTANT_BITS * PROBE_BITS[0]
    constant, flat = _constant_bits(probe_run(cls, PROBE_BITS[0])["codes"])
    epochs = PROBE_EPOCHS
    if (constant > limit or flat) and cls.trainable:
        epochs = PROBE_LONG_EPOCHS
        constant, flat = _constant_bits(probe_run(cls, PROBE_BITS[0], fresh=True, epochs=epochs)["codes"])
    if flat:
        raise ConformanceError(f"every bit of the {flat} codes is constant (after {epochs} epochs)")
    if constant > limit:
        raise ConformanceError(f"{constant} of {PROBE_BITS[0]} bits are the same in every query "
                               f"and database code (after {epochs} epochs)")
    return f"{constant} of {PROBE_BITS[0]} bits constant over queries and database ({epochs} epochs)"


def check_beats_chance(method) -> str:
    """The probe run's tie-aware mAP exceeds chance, the tie-aware mAP of codes that are
    all equal (a random ranking), by ``CHANCE_MARGIN``."""
    cls = resolve_method(method)
    codes = probe_run(cls, PROBE_BITS[0])["codes"]
    args = (codes["query_labels"], codes["db_labels"])
    found = evaluate_codes(codes["query_codes"], codes["db_codes"], *args)["map_tie_aware"]
    equal = [np.zeros_like(codes["query_codes"]), np.zeros_like(codes["db_codes"])]
    chance = evaluate_codes(*equal, *args)["map_tie_aware"]
    if not found > chance + CHANCE_MARGIN:
        raise ConformanceError(f"probe mAP (tie-aware) {found:.3f} does not beat chance "
                               f"{chance:.3f} by {CHANCE_MARGIN}")
    return f"probe mAP (tie-aware) {found:.3f}, chance {chance:.3f}"


def check_batch_independent(method) -> str:
    """Each query's ``encode`` output is the same alone, in the query batch, in reversed
    order and among the training samples (within ``BATCH_TOLERANCE`` of the largest)."""
    cls = resolve_method(method)
    trained = probe_run(cls, PROBE_BITS[0])["method"].eval()
    names = INPUT_NAMES[cls.inputs]
    query = probe_features().select(names, np.flatnonzero(~PROBE_IS_TRAIN))
    more = probe_features().select(names, np.concatenate([np.flatnonzero(PROBE_IS_TRAIN),
                                                          np.flatnonzero(~PROBE_IS_TRAIN)]))
    n = len(next(iter(query.values())))
    with torch.no_grad():
        batch = trained.encode(dict(query))
        ways = {"alone": torch.cat([trained.encode({k: v[i:i + 1] for k, v in query.items()})
                                    for i in range(n)]),
                "in reversed order": trained.encode({k: v.flip(0) for k, v in query.items()}).flip(0),
                "among the training samples": trained.encode(more)[-n:]}
    scale = float(batch.abs().max()) or 1.0
    for way, values in ways.items():
        gap = float((values - batch).abs().max())
        if gap > BATCH_TOLERANCE * scale:
            raise ConformanceError(f"a sample's output changes with its batch: {way} it differs "
                                   f"by {gap:.3g} (largest output {scale:.3g})")
    return f"{n} queries alone, reversed and among {len(next(iter(more.values())))} samples agree"


def check_unsupervised_ignores_labels(method) -> str:
    """An unsupervised method's codes are byte-identical when the training labels are
    shuffled (supervised methods: not applicable)."""
    cls = resolve_method(method)
    if cls.supervised:
        return "not applicable: supervised method"
    codes = probe_run(cls, PROBE_BITS[0])["codes"]
    shuffled = probe_run(cls, PROBE_BITS[0], fresh=True, labels=shuffled_probe_labels())["codes"]
    for side, array in _sides(codes).items():
        other = _sides(shuffled)[side]
        if not np.array_equal(array, other):
            raise ConformanceError(f"unsupervised, but {int((array != other).sum())} {side} code "
                                   f"bits change when the training labels are shuffled")
    return "codes unchanged with shuffled training labels"


def check_loss_reaches_encode(method) -> str:
    """The gradient of ``loss`` reaches every trainable parameter that ``encode`` uses
    (closed-form methods: not applicable)."""
    cls = resolve_method(method)
    if not cls.trainable:
        return "not applicable: closed-form method (fit)"
    model = started_model(cls)
    batch = probe_batch(cls)
    used = _grad_names(model, lambda: model.encode(batch["inputs"]).sum())
    reached = _grad_names(model, lambda: sum(model.loss(_visible(model, batch)).values()))
    missed = sorted(used - reached)
    if missed:
        shown = ", ".join(missed[:3]) + (f" and {len(missed) - 3} more" if len(missed) > 3 else "")
        raise ConformanceError(f"the loss does not reach {len(missed)} of the {len(used)} "
                               f"parameters encode uses ({shown})")
    return f"the loss reaches all {len(used)} parameters encode uses"


def _visible(model, batch: dict) -> dict:
    return batch if model.supervised else {k: v for k, v in batch.items() if k != "labels"}


def _grad_names(model, objective) -> set[str]:
    """Names of the trainable parameters that ``objective()`` gives a gradient."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(PROBE_SEED)  # the same dropout masks for every evaluation
    objective().backward()
    names = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return names


def check_state_in_state_dict(method) -> str:
    """A model rebuilt at the probe seed and given the trained model's ``state_dict``
    encodes exactly as the trained model: nothing ``encode`` depends on lives outside
    ``state_dict``, where restoring the best validation epoch (or a checkpoint) would miss it."""
    cls = resolve_method(method)
    trained = probe_run(cls, PROBE_BITS[0])["method"].eval()
    seed_everything(PROBE_SEED)
    rebuilt = cls(bits=PROBE_BITS[0], num_classes=PROBE_CLASSES, input_shapes=probe_input_shapes(cls))
    rebuilt.load_state_dict(trained.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        query = probe_features().select(INPUT_NAMES[cls.inputs], np.flatnonzero(~PROBE_IS_TRAIN))
        gap = float((rebuilt.encode(dict(query)) - trained.encode(dict(query))).abs().max())
    if gap > 0:
        raise ConformanceError(f"a model rebuilt from the trained state_dict encodes differently "
                               f"(by up to {gap:.3g}): state outside state_dict is lost when the "
                               f"best epoch is restored")
    return "a model rebuilt from its state_dict encodes identically"


BEHAVIOUR_CHECKS = (check_bits_vary, check_beats_chance, check_batch_independent,
                    check_unsupervised_ignores_labels, check_loss_reaches_encode,
                    check_state_in_state_dict)
