"""The conformance kit's probe data: tiny synthetic tensors of the shapes a method
declares (no images, no backbone), ``PROBE_CLASSES`` classes, each a random prototype per
input plus noise, so a method can learn something in a few steps; and ``probe_run``, which
trains or fits, encodes and binarises through the harness's own ``run_method``."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from registry import load_plugins
from registry.loading import one_line

from ..features.backbones import EfficientNetLite0
from ..grid.protocols import Protocol, materialise
from ..method import INPUT_NAMES
from ..run.inputs import FrozenInputs, train_factors
from ..run.loop import TrainData, method_view, seed_everything
from ..run.method_run import run_method

PROBE_CLASSES = 4
PROBE_TRAIN_PER_CLASS = 8
PROBE_QUERY_PER_CLASS = 4
PROBE_BITS = (12, 32)
PROBE_EPOCHS = 2
PROBE_LONG_EPOCHS = 6  # a second chance for checks a slow start can fail
PROBE_STEPS = 5
PROBE_SEED = 0
PROBE_INPUT_SIZE = 64
STRIDES = {"s8": 8, "s16": 16, "s32": 32}


class ConformanceError(AssertionError):
    """A method breaks the contract; the message says how."""


# ----------------------------------------------------------------------------- probe data

def probe_shapes(size: int = PROBE_INPUT_SIZE) -> dict[str, tuple]:
    """Per-sample shapes of every input the harness provides at ``size`` px (the frozen
    backbone's stage maps and pooled feature, and the image batch for ``"images"``)."""
    shapes = {name: (channels, size // STRIDES[name], size // STRIDES[name])
              for name, channels in EfficientNetLite0.stage_channels.items()}
    shapes["pooled"] = (EfficientNetLite0.feature_dim,)
    shapes["images"] = (3, size, size)
    return shapes


class _ProbeArrays(Mapping):
    """Input name -> (N, *shape) tensor, generated on first use: a random prototype per
    class plus noise (``noise`` sets its scale), through swish like the backbone's outputs."""

    def __init__(self, labels: np.ndarray, seed: int, noise: float):
        self.labels, self.seed, self.noise = labels, seed, noise
        self.shapes = probe_shapes()
        self.made: dict[str, torch.Tensor] = {}

    def __getitem__(self, name):
        if name not in self.made:
            shape = self.shapes[name]
            index = sorted(self.shapes).index(name)
            prototypes = torch.randn((PROBE_CLASSES,) + shape,
                                     generator=torch.Generator().manual_seed(self.seed + index))
            noise = torch.randn((len(self.labels),) + shape,
                                generator=torch.Generator().manual_seed(self.seed + 100 + index))
            self.made[name] = torch.nn.functional.silu(prototypes[self.labels] + self.noise * noise)
        return self.made[name]

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)


class ProbeFeatures:
    """Synthetic stand-in for :class:`benchmark.features.Features` (same ``select``)."""

    def __init__(self, labels: np.ndarray, seed: int = 1234, noise: float = 0.5):
        self.arrays = _ProbeArrays(labels, seed, noise)

    def select(self, names, index) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(np.asarray(index))
        return {n: self.arrays[n][index] for n in names}


def probe_split() -> tuple[np.ndarray, np.ndarray]:
    """Labels and train flags: every class has train and query samples."""
    per_class = PROBE_TRAIN_PER_CLASS + PROBE_QUERY_PER_CLASS
    labels = np.repeat(np.arange(PROBE_CLASSES), per_class)
    is_train = np.tile(np.arange(per_class) < PROBE_TRAIN_PER_CLASS, PROBE_CLASSES)
    return labels, is_train


PROBE_LABELS, PROBE_IS_TRAIN = probe_split()
_FEATURES: ProbeFeatures | None = None
_RUNS: dict[tuple, object] = {}


def probe_features() -> ProbeFeatures:
    global _FEATURES
    if _FEATURES is None:
        _FEATURES = ProbeFeatures(PROBE_LABELS)
    return _FEATURES


def shuffled_probe_labels() -> np.ndarray:
    """The probe labels with the training samples' labels permuted (seeded)."""
    labels, train = PROBE_LABELS.copy(), np.flatnonzero(PROBE_IS_TRAIN)
    labels[train] = np.random.default_rng(PROBE_SEED).permutation(labels[train])
    return labels


def probe_batch(cls) -> dict:
    """One training batch of the probe data (the first ``batch_size`` samples)."""
    train_index = np.flatnonzero(PROBE_IS_TRAIN)[: cls.train_config["batch_size"]]
    batch = {"inputs": probe_features().select(INPUT_NAMES[cls.inputs], train_index),
             "labels": torch.from_numpy(PROBE_LABELS[train_index]),
             "indices": torch.arange(len(train_index))}
    if train_factors(cls) != (1,):
        batch["resolution"] = torch.ones(len(train_index))  # full resolution
    return batch


def started_model(cls):
    """A fresh model at the probe seed after ``on_epoch_start(0, data)`` (in eval mode,
    without gradients, as the loop calls it), left in train mode."""
    seed_everything(PROBE_SEED)
    model = cls(bits=PROBE_BITS[0], num_classes=PROBE_CLASSES, input_shapes=probe_input_shapes(cls))
    train_index = np.flatnonzero(PROBE_IS_TRAIN)
    data = TrainData(probe_features().select(INPUT_NAMES[cls.inputs], train_index),
                     torch.from_numpy(PROBE_LABELS[train_index]), cls.train_config["batch_size"])
    model.eval()
    with torch.no_grad():
        model.on_epoch_start(0, method_view(model, data))
    return model.train()


def probe_run(method_cls, bits: int, seed: int = PROBE_SEED, fresh: bool = False,
              labels: np.ndarray | None = None, epochs: int = PROBE_EPOCHS) -> dict:
    """``run_method`` on the probe data (cached per class, bits and seed); with ``fresh``,
    ``labels`` replace the labels the protocol is materialised from (a method trains on
    them; its codes are evaluated with the probe's own) and ``epochs`` the probe's."""
    key = (method_cls, bits, seed)
    if fresh or key not in _RUNS:
        by_factor = {1: probe_features()}
        # lower resolution = noisier probe inputs, same prototypes
        by_factor.update({f: ProbeFeatures(PROBE_LABELS, noise=0.5 * f)
                          for f in train_factors(method_cls) if f != 1})
        try:
            split = materialise(PROBE_LABELS if labels is None else labels, PROBE_IS_TRAIN,
                                PROBE_CLASSES, Protocol(), seed)
            source = FrozenInputs(method_cls, split, by_factor)
            outcome = run_method(method_cls, {}, source, PROBE_LABELS, num_classes=PROBE_CLASSES,
                                 bits=bits, seed=seed, epochs=epochs)
        except Exception as exc:  # noqa: BLE001 - reported as the check's reason
            outcome = exc
        if fresh:
            return _unwrap(outcome, bits)
        _RUNS[key] = outcome
    return _unwrap(_RUNS[key], bits)


def _unwrap(outcome, bits):
    if isinstance(outcome, BaseException):
        raise ConformanceError(f"a {bits}-bit probe run failed: {one_line(outcome)}")
    return outcome


def resolve_method(method) -> type:
    if isinstance(method, str):
        plugins = load_plugins()
        if method in plugins.methods:
            return plugins.methods[method].cls
        failed = {f.plugin: f.reason for f in plugins.failures}
        if method in failed:
            raise ConformanceError(f"plugin {method!r} failed to load: {failed[method]}")
        raise ConformanceError(f"no registered method {method!r}")
    return method


def probe_input_shapes(method_cls) -> dict[str, tuple]:
    shapes = probe_shapes()
    return {n: shapes[n] for n in INPUT_NAMES[method_cls.inputs]}
