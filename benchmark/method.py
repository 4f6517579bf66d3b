"""The method contract: the only seam a plugin sees.

A method is an ``nn.Module`` subclass of :class:`HashMethod` with a unique ``name``.
The harness constructs it as ``cls(bits=..., num_classes=..., input_shapes=..., **hparams)``
and then either

* calls ``fit(inputs, labels_or_None)`` once (closed-form methods, ``trainable = False``), or
* minimises ``sum(loss(batch).values())`` with the optimiser and epochs the class declares
  (``train_config``), calling ``on_epoch_start(epoch, data)`` before each epoch and
  ``on_train_end(data)`` once after training.

Afterwards ``encode(inputs)`` maps inputs to real values of shape ``(N, bits)``; the
harness binarises them (``h >= 0`` -> 1) so ``sign(0)`` never produces half-integer
distances. Labels never reach ``encode``. A method may also expose ``real_valued(inputs)``,
the real-valued feature its codes stand for (binary-vs-real-valued comparisons).

Inputs (the same names in both regimes)
---------------------------------------
``inputs`` declares what the method consumes; it always receives a dict of float tensors:

* ``"pooled"``: ``{"pooled": (B, D)}``, the global-average-pooled last-stage feature,
* ``"stages"``: also the stage maps ``"s8"``, ``"s16"``, ``"s32"`` (outputs at stride 8,
  16 and 32 of the input; shapes depend on the backbone, e.g. EfficientNet-Lite0 at 224 px:
  40x28x28, 112x14x14, 320x7x7; ResNet-50: 512x28x28, 1024x14x14, 2048x7x7),
* ``"images"``: the stage maps and ``"pooled"`` plus ``"images"`` (B, 3, S, S), the
  normalised image batch the backbone saw (for methods that look at pixels themselves;
  ``finetune`` regime only: the frozen cache holds no pixels, so a frozen run refuses it).

``input_shapes`` gives the per-sample shape of each of those tensors (name -> tuple).

Regimes: ``frozen`` (default) computes the backbone outputs once per image (centre crop,
no augmentation) and caches them on disk; ``finetune`` trains the harness's backbone end
to end together with the method: each training batch is a harness-augmented image batch
(random resized crop + horizontal flip, the same for every method) fed through the
trainable backbone, which produces exactly the dict above, with gradients. The method's
code is the same in both regimes; its parameters use its own ``train_config`` optimiser,
the backbone's use the harness's SGD recipe. ``encode`` receives the un-augmented
(centre-crop) outputs in both regimes.

Training batches
----------------
A training ``batch`` is a dict with ``inputs`` (as above), ``labels`` (LongTensor, train
labels after the protocol's label noise; the method never sees clean or test labels) and
``indices`` (LongTensor, positions in the training set, stable across epochs).

Training at several resolutions (``train_resolutions``)
-------------------------------------------------------
A method may declare ``train_resolutions = (1, 2, 4)``: downsampling factors (the image is
centre-cropped at the input size, shrunk by the factor and resized back, exactly like the
``--resolution`` protocol's queries). The harness then also computes (and, frozen, caches)
the backbone outputs of every training image at each factor and, in every epoch, gives
each training sample the inputs of one factor drawn at random for that sample and epoch
(seeded from the run seed), adding ``batch["resolution"]``: a float tensor (B,) holding
each sample's resolution ratio ``r = 1 / factor`` (1.0 = full resolution). The default
``train_resolutions = (1,)`` adds nothing: no ``"resolution"`` key and no extra random
draws, so such methods train exactly as before. ``on_epoch_start`` always sees the
full-resolution inputs; ``encode`` never receives the resolution (a query's resolution is
unknown at test time), nor does ``fit``.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

INPUT_NAMES = {"pooled": ("pooled",), "stages": ("s8", "s16", "s32", "pooled"),
               "images": ("images", "s8", "s16", "s32", "pooled")}


class HashMethod(nn.Module):
    name: ClassVar[str] = ""
    supervised: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    inputs: ClassVar[str] = "pooled"
    #: downsampling factors the harness trains at (see "Training at several resolutions").
    train_resolutions: ClassVar[tuple] = (1,)
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

    def on_train_end(self, data) -> None:
        """Called once after training (after the val-selected state is restored), in eval
        mode without gradients, with the same ``data`` (e.g. to fit encoding statistics
        such as thresholds on the training set)."""

    def encode(self, inputs) -> torch.Tensor:
        raise NotImplementedError

    def real_valued(self, inputs) -> torch.Tensor | None:
        """Optional: the real-valued feature (N, D) that the codes stand for (e.g. the
        embedding a hash layer reads). When a method returns one, a frozen run also records
        its cosine-ranking mAP (``map_real``) and float search latency, so the cost of
        binarising is measured, not assumed. ``None`` (the default): no such feature."""
        return None


def pooled_mlp_head(input_shapes: dict, bits: int, hidden: int = 1024) -> list[nn.Module]:
    """The two-layer hash head (pooled -> hidden -> bits, ReLU) that the frozen-regime
    plugins train in place of their papers' end-to-end networks; a list, so a plugin can
    append layers before wrapping it in ``nn.Sequential``."""
    return [nn.Linear(input_shapes["pooled"][0], hidden), nn.ReLU(), nn.Linear(hidden, bits)]
