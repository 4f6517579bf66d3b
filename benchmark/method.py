"""The method contract: the only seam a plugin sees.

A method is an ``nn.Module`` subclass of :class:`HashMethod` with a unique ``name``.
The harness constructs it as ``cls(bits=..., num_classes=..., input_shapes=..., **hparams)``
and then either

* calls ``fit(inputs, labels_or_None)`` once (closed-form methods, ``trainable = False``), or
* minimises ``sum(loss(batch).values())`` with the optimiser and epochs the class declares
  (``train_config``), calling ``on_epoch_start(epoch, data)`` before each epoch.

Afterwards ``encode(inputs)`` maps inputs to real values of shape ``(N, bits)``; the
harness binarises them (``h >= 0`` -> 1) so ``sign(0)`` never produces half-integer
distances. Labels never reach ``encode``.

``inputs`` declares what the method consumes; it always receives a dict of float tensors:

* ``"pooled"``: ``{"pooled": (B, D)}`` (the backbone's global-average-pooled feature),
* ``"stages"``: the stage maps too, ``{"s8": (B,C,H,W), "s16": ..., "s32": ..., "pooled": (B, D)}``.

``input_shapes`` gives the per-sample shape of each of those tensors (name -> tuple).
A training ``batch`` is a dict with ``inputs`` (as above), ``labels`` (LongTensor, train
labels after the protocol's noise) and ``indices`` (positions in the training set).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

INPUT_NAMES = {"pooled": ("pooled",), "stages": ("s8", "s16", "s32", "pooled")}


class HashMethod(nn.Module):
    name: ClassVar[str] = ""
    supervised: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    inputs: ClassVar[str] = "pooled"
    #: epochs, batch_size and optimizer (torch.optim class name + kwargs) for SGD training.
    train_config: ClassVar[dict] = {
        "epochs": 30, "batch_size": 64,
        "optimizer": {"type": "SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
    }

    def __init__(self, bits: int, num_classes: int, input_shapes: dict[str, tuple]):
        super().__init__()
        self.bits = bits
        self.num_classes = num_classes
        self.input_shapes = dict(input_shapes)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} is trainable but has no loss()")

    def fit(self, inputs, labels) -> None:
        raise NotImplementedError(f"{type(self).__name__} is closed-form but has no fit()")

    def on_epoch_start(self, epoch: int, data) -> None:
        """Called before each training epoch (e.g. to refresh memories or targets)."""

    def encode(self, inputs) -> torch.Tensor:
        raise NotImplementedError
