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
distances. Labels never reach ``encode``, and ``encode`` must not change the model (the
harness compares a hash of its parameters and buffers before and after encoding and fails
the run if they differ). A method may also expose ``real_valued(inputs)``, the real-valued
feature its codes stand for (binary-vs-real-valued comparisons), ``encode_database(inputs,
indices)`` (asymmetric methods: codes of training-split database samples) and
``epoch_indices(epoch, num_train, generator)`` (which training samples an epoch uses).
Unsupervised methods (``supervised = False``) get no ``labels`` in their batches.

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
labels after the protocol's label noise; the method never sees clean or test labels;
supervised methods only) and ``indices`` (LongTensor, positions in the training set,
stable across epochs). With ``epoch_indices`` an epoch's batches cover only the positions
it returns (in a seeded random order); without it, every training sample.

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

Hyperparameters
---------------
A method's hyperparameters are flat names (:func:`hparam_defaults`): its constructor's
keyword arguments with their defaults (followed up the class hierarchy while an
``__init__`` forwards ``**kwargs``) and, for trainable methods, ``train_config`` flattened:
``epochs``, ``batch_size``, ``optimizer`` (the ``torch.optim`` class name) and the
optimiser's keyword arguments (``lr``, ``momentum``, ...). Users set them per method
(``--hparams dsh.alpha=0.1,dsh.lr=0.02`` or a ``--config`` file); a value must have its
default's type and lie in ``hparam_ranges`` (and, for training ones, the harness's
``TRAIN_RANGES``). ``search_space`` declares what ``python -m benchmark tune`` may vary.
Every trainable method also takes ``schedule``, its learning-rate schedule
(:mod:`benchmark.run.schedule`, e.g. ``step:70:0.1``; default ``none``), and may declare
``regime_hparams``: defaults for one regime (``frozen`` / ``finetune``) over its own.
The run id covers the resolved values (defaults filled in) and a digest of the method's
code, so changing a default re-runs the method.

Variants
--------
A subclass that sets ``name`` and ``variant_hparams = {...}`` is a named variant: the same
code with other defaults (an ablation row). A ``--config`` file defines variants the same
way (``name``, ``base``, ``hparams``); both are run by name.
"""
from __future__ import annotations

import inspect
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
    #: True: 4-D inputs (stage maps, images) come in channels-last memory format, the same
    #: shapes and values (no copy for a method whose layers want that layout).
    channels_last_inputs: ClassVar[bool] = False
    #: epochs, batch_size and optimizer (torch.optim class name + kwargs) for SGD training.
    train_config: ClassVar[dict] = {
        "epochs": 30, "batch_size": 64,
        "optimizer": {"type": "SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
    }
    #: valid values (see "Hyperparameters"): name -> (low, high), inclusive, None = open.
    hparam_ranges: ClassVar[dict] = {}
    #: what ``tune`` searches (see "Hyperparameters"): name -> ("float" | "log" | "int",
    #: low, high) or ("choice", [values]).
    search_space: ClassVar[dict] = {}
    #: a named variant's settings over its base class's defaults (see "Variants").
    variant_hparams: ClassVar[dict] = {}
    #: defaults for one regime over the class's own, under the user's settings, e.g.
    #: ``{"finetune": {"lr": 1e-3, "epochs": 100, "schedule": "step:70:0.1"}}``.
    regime_hparams: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        """A class that declares ``variant_hparams`` gets them as constructor defaults (on
        top of its parent's), so constructing it directly gives the variant too."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("variant_hparams")
        if own is None:
            return
        parent = super(cls, cls).variant_hparams
        unknown = sorted(set(own) - set(hparam_defaults(cls.__mro__[1])))
        if unknown:
            raise TypeError(f"{cls.__name__}: variant_hparams names unknown hyperparameters "
                            f"{', '.join(unknown)}")
        cls.variant_hparams = {**parent, **own}
        keywords = {k: v for k, v in own.items() if k in _constructor_defaults(cls)}
        inner = cls.__init__

        def __init__(self, bits, num_classes, input_shapes, **hparams):
            inner(self, bits, num_classes, input_shapes, **{**keywords, **hparams})
        cls.__init__ = __init__

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

    def encode_database(self, inputs, indices: torch.Tensor) -> torch.Tensor | None:
        """Optional (asymmetric methods, e.g. ADSH's learned database codes): real values
        (N, bits) for the database samples at training-set positions ``indices`` (LongTensor,
        the same positions as ``batch["indices"]``), binarised like ``encode``'s. The harness
        calls it only when the database is the training split, for the database side (also
        in validation selection); queries always go through ``encode``, and the record says
        ``provenance.asymmetric``. ``None`` (the default): encode the database with ``encode``."""
        return None

    def epoch_indices(self, epoch: int, num_train: int,
                      generator: torch.Generator) -> torch.Tensor | None:
        """Optional sampler: the training positions (1-D LongTensor, values in
        ``0..num_train - 1``) this epoch's batches cover, e.g. ADSH's sampled Omega; draw any
        randomness from ``generator`` (the run-seeded one the harness shuffles with). Called
        before ``on_epoch_start``; the harness shuffles the positions and batches them.
        ``None`` (the default): every training sample, each epoch."""
        return None


CONSTRUCTOR_ARGS = ("bits", "num_classes", "input_shapes")
#: the training hyperparameter every trainable method takes: its lr schedule
#: (``benchmark.run.schedule``; "none", the default, keeps it out of the run's spec)
SCHEDULE = "schedule"
#: valid ranges of training hyperparameters (inclusive; None = open), for every method
TRAIN_RANGES = {"epochs": (1, None), "batch_size": (2, None), "lr": (0, None),
                "weight_decay": (0, None), "momentum": (0, 1)}


def _constructor_defaults(cls) -> dict:
    """Keyword defaults the constructor accepts: the nearest ``__init__``'s and, while it
    forwards ``**kwargs``, those of the next one up the MRO (the nearer default wins)."""
    out: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        for p in params:
            if (p.default is not p.empty and p.name not in CONSTRUCTOR_ARGS
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)):
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def train_defaults(cls) -> dict:
    """``train_config`` as flat hyperparameters ({} for closed-form methods)."""
    if not cls.trainable:
        return {}
    config = {k: v for k, v in cls.train_config.items() if k != "optimizer"}
    optimizer = dict(cls.train_config.get("optimizer", {}))
    return {"epochs": 1, "batch_size": 64, **config, "optimizer": optimizer.pop("type", None),
            **optimizer}


def hparam_defaults(cls) -> dict:
    """Every hyperparameter of ``cls`` and its default (see "Hyperparameters")."""
    keywords, training = _constructor_defaults(cls), train_defaults(cls)
    clash = sorted(set(keywords) & set(training))
    if clash:
        raise TypeError(f"{cls.__name__}: constructor keywords {', '.join(clash)} clash with "
                        f"training hyperparameters")
    return {**keywords, **training, **cls.variant_hparams}


def split_hparams(cls, values: dict) -> tuple[dict, dict | None]:
    """(constructor keywords, training config or None) of flat resolved hyperparameters."""
    keywords = _constructor_defaults(cls)
    kwargs = {k: v for k, v in values.items() if k in keywords}
    if not cls.trainable:
        return kwargs, None
    top = {k for k in cls.train_config if k != "optimizer"} | {"epochs", "batch_size", SCHEDULE}
    config = {k: v for k, v in values.items() if k in top and (k != SCHEDULE or v not in (None, "none"))}
    config["optimizer"] = {"type": values["optimizer"],
                           **{k: v for k, v in values.items()
                              if k not in keywords and k not in top and k != "optimizer"}}
    return kwargs, config


def pooled_mlp_head(input_shapes: dict, bits: int, hidden: int = 1024) -> list[nn.Module]:
    """The two-layer hash head (pooled -> hidden -> bits, ReLU) that the frozen-regime
    plugins train in place of their papers' end-to-end networks; a list, so a plugin can
    append layers before wrapping it in ``nn.Sequential``."""
    return [nn.Linear(input_shapes["pooled"][0], hidden), nn.ReLU(), nn.Linear(hidden, bits)]
