"""Where a run's inputs come from: the only thing the two regimes do differently.

Both give the loop a training set (batches and ``on_epoch_start`` data) and give encoding
the un-augmented inputs of a role (``train``, ``val``, ``query``, ``db``) together with the
positions kept (all of them, unless unreadable images are skipped):

* :class:`FrozenInputs`: the cached backbone outputs (``features.cache``); the resolution
  protocol's queries / database and a method's ``train_resolutions`` read the caches at
  those factors.
* :class:`FinetuneInputs`: the harness's backbone, trained end to end with the method on
  harness-augmented images (``features.transforms.augment``, the same for every method),
  SGD lr 1e-3, momentum 0.9, weight decay 5e-4 (the fine-grained hashing papers' recipe);
  encoding uses the centre crop in eval mode.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BenchmarkError, DataError
from ..features.backbones import build_backbone
from ..features.cache import OUTPUTS
from ..features.lazy import FeatureView
from ..method import INPUT_NAMES
from .device import Amp, default_workers, resolve_device
from .images import ImageItems, ImageLoader, ImageStream
from .loop import TrainData, epoch_order

BACKBONE_SGD = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}


def input_names(method_cls) -> tuple[str, ...]:
    kind = getattr(method_cls, "inputs", "pooled")
    if kind not in INPUT_NAMES:
        raise BenchmarkError(f"method {method_cls.name!r} asks for inputs {kind!r}; "
                             f"supported: {', '.join(INPUT_NAMES)}")
    return INPUT_NAMES[kind]


def input_layout(method_cls) -> torch.memory_format:
    """The memory format of the method's 4-D inputs (``channels_last_inputs``)."""
    return torch.channels_last if getattr(method_cls, "channels_last_inputs", False) \
        else torch.contiguous_format


def train_factors(method_cls) -> tuple:
    """The method's ``train_resolutions`` (``(1,)``: full resolution only)."""
    return tuple(getattr(method_cls, "train_resolutions", (1,)) or (1,))


def frozen_outputs(method_classes) -> tuple[str, ...]:
    """The cached outputs a frozen grid of these methods reads (what the cache computes)."""
    wanted = {n for cls in method_classes
              for n in INPUT_NAMES.get(getattr(cls, "inputs", "pooled"), ())}
    return tuple(n for n in OUTPUTS if n in wanted)


class FrozenInputs:
    """Cached features of one split. ``by_factor`` maps a downsampling factor to its
    features (1 = full resolution); ``query_factor``/``db_factor`` are the protocol's.

    Every role's inputs (and the training set's) are :class:`~benchmark.features.lazy.FeatureView`
    objects over the cached arrays: batches, encoding, validation and ``on_epoch_start``
    read the rows they use from the cache file, so memory does not grow with the split's
    stage maps."""
    device = torch.device("cpu")

    def __init__(self, method_cls, split, by_factor: dict, query_factor=1, db_factor=1):
        self.method_cls, self.split, self.by_factor = method_cls, split, by_factor
        self.names = input_names(method_cls)
        self.channels_last = input_layout(method_cls) == torch.channels_last
        absent = [n for n in self.names if n not in by_factor[1].arrays]
        if absent:
            raise BenchmarkError(f"method {method_cls.name!r} needs {', '.join(absent)}, which "
                                 f"cached frozen features do not hold (use --regime finetune)")
        self.factors = {"train": 1, "val": 1, "query": query_factor, "db": db_factor}

    def views(self, factor, index) -> dict[str, FeatureView]:
        arrays = self.by_factor[factor].arrays
        return {n: FeatureView(arrays[n], index, channels_last=self.channels_last)
                for n in self.names}

    def shapes(self) -> dict[str, tuple]:
        arrays = self.by_factor[1].arrays
        return {n: tuple(arrays[n].shape[1:]) for n in self.names}

    def index(self, role: str) -> np.ndarray:
        return getattr(self.split, f"{role}_index")

    def inputs(self, role: str):
        """(inputs, kept positions) of a role's images for encoding."""
        index = self.index(role)
        return self.views(self.factors[role], index), np.arange(len(index))

    def training_set(self, labels: torch.Tensor, batch_size: int) -> TrainData:
        factors = train_factors(self.method_cls)
        by_factor = None
        if factors != (1,):
            missing = [f for f in factors if f not in self.by_factor]
            if missing:
                raise BenchmarkError(f"method {self.method_cls.name!r}: no features at training "
                                     f"resolution factor(s) {missing}")
            by_factor = {f: self.views(f, self.split.train_index) for f in factors}
        return TrainData(self.views(1, self.split.train_index), labels, batch_size, by_factor)

    def modules(self) -> list:
        return []

    def skipped(self) -> list[str]:
        return []


class FinetuneInputs:
    """The trainable backbone on the dataset's images (see the module docstring), on
    ``request.device`` in channels_last, forward passes under the spec's ``precision``
    (``run.device.Amp``), images decoded by ``request.workers`` DataLoader workers
    (``run.images``; results do not depend on their number)."""

    def __init__(self, method_cls, split, dataset, spec: dict, request):
        self.method_cls, self.split, self.dataset = method_cls, split, dataset
        self.size, self.seed = spec["input_size"], spec["seed"]
        protocol = spec["protocol"]
        self.factors = {"train": 1, "val": 1, "query": protocol["resolution"],
                        "db": protocol["resolution_db"]}
        self.device = resolve_device(getattr(request, "device", None) or "auto")
        self.amp = Amp(self.device, spec.get("precision", "fp32"))
        kwargs = {"weights": request.backbone_weights} if request.backbone_weights else {}
        self.backbone = build_backbone(spec["backbone"], **kwargs).to(
            self.device, memory_format=torch.channels_last)
        self.names = input_names(method_cls)
        self.layout = input_layout(method_cls)
        self.loader = ImageLoader(request.on_bad_image)
        self.mean, self.std = self.backbone.mean, self.backbone.std
        workers = getattr(request, "workers", None)
        items = ImageItems(dataset, self.size, self.mean, self.std, self.seed, train_factors(method_cls))
        self.stream = ImageStream(items, default_workers(self.device) if workers is None else workers,
                                  self.device, self.seed)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone outputs of a batch of images, laid out as cached features are
        (contiguous, or channels-last for ``channels_last_inputs``)."""
        images = images.to(self.device, non_blocking=True)
        out = self.backbone(images.contiguous(memory_format=torch.channels_last))
        out = {n: out[n].contiguous(memory_format=self.layout if out[n].dim() == 4
                                    else torch.contiguous_format)
               for n in self.names if n != "images"}
        if "images" in self.names:
            out["images"] = images.contiguous(memory_format=self.layout)
        return {n: out[n] for n in self.names}

    def shapes(self) -> dict[str, tuple]:
        probe, _ = self.outputs(self.split.train_index[:2])
        return {n: tuple(v.shape[1:]) for n, v in probe.items()}

    def inputs(self, role: str):
        return self.outputs(getattr(self.split, f"{role}_index"), self.factors[role])

    @torch.no_grad()
    def outputs(self, index: np.ndarray, downsample: float = 1, batch_size: int = 64):
        """Centre-crop backbone outputs for dataset images ``index`` (eval mode) and the
        positions kept (unreadable images dropped under ``skip``)."""
        self.backbone.eval()
        keys = [(int(image), pos, -1, float(downsample)) for pos, image in enumerate(index)]
        chunks, kept = [], []
        with self.amp.autocast():
            for batch in self.stream([keys[s:s + batch_size] for s in range(0, len(keys), batch_size)]):
                self.loader.settle(batch["errors"])
                if batch["images"] is not None:
                    chunks.append({k: v.float().cpu() for k, v in self.forward(batch["images"]).items()})
                    kept.extend(batch["positions"].tolist())
        if not chunks:
            raise DataError("no readable image to encode")
        return {n: torch.cat([c[n] for c in chunks]) for n in self.names}, np.array(kept, dtype=np.int64)

    def training_set(self, labels: torch.Tensor, batch_size: int) -> "FinetuneTrainingSet":
        return FinetuneTrainingSet(self, labels, batch_size)

    def modules(self) -> list:
        return [self.backbone]

    def skipped(self) -> list[str]:
        return sorted(self.loader.skipped.values())


class FinetuneTrainingSet:
    """Augmented training batches through the backbone, with gradients (the loop's
    training set in the finetune regime); ``amp`` is the run's precision."""

    def __init__(self, source: FinetuneInputs, labels: torch.Tensor, batch_size: int):
        self.source, self.labels, self.batch_size = source, labels, batch_size
        self.factors = train_factors(source.method_cls)
        self.amp = source.amp

    def __len__(self) -> int:
        return len(self.labels)

    def epoch_data(self) -> TrainData:
        """This epoch's centre-crop outputs of every readable training image."""
        inputs, kept = self.source.inputs("train")
        device = self.source.device
        return TrainData({k: v.to(device) for k, v in inputs.items()},
                         self.labels[kept].to(device), self.batch_size)

    def train_mode(self) -> None:
        self.source.backbone.train()

    def optimizers(self) -> list:
        params = [p for p in self.source.backbone.parameters() if p.requires_grad]
        return [torch.optim.SGD(params, **BACKBONE_SGD)]

    def batches(self, generator: torch.Generator, epoch: int, positions=None):
        """Augmented batches in a seeded order (augmentation seeded per image and epoch) of
        every training image, or of ``positions`` only (a method's ``epoch_indices``)."""
        source, device, size = self.source, self.source.device, self.batch_size
        order = epoch_order(len(self.labels), generator, positions).tolist()
        index = source.split.train_index
        keys = [[(int(index[p]), p, epoch, 1) for p in order[s:s + size]]
                for s in range(0, len(order), size)]
        for loaded in source.stream(keys):
            source.loader.settle(loaded["errors"])
            kept = loaded["positions"]
            if len(kept) < 2:
                continue  # pairwise losses need two samples
            batch = {"inputs": source.forward(loaded["images"]),
                     "labels": self.labels[kept].to(device), "indices": kept.to(device)}
            if self.factors != (1,):
                batch["resolution"] = loaded["ratios"].to(device)
            yield batch
