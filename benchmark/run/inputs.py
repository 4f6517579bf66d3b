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
from ..features.transforms import Transform, augment, to_tensor
from ..method import INPUT_NAMES
from .loop import TrainData

BACKBONE_SGD = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}


def input_names(method_cls) -> tuple[str, ...]:
    kind = getattr(method_cls, "inputs", "pooled")
    if kind not in INPUT_NAMES:
        raise BenchmarkError(f"method {method_cls.name!r} asks for inputs {kind!r}; "
                             f"supported: {', '.join(INPUT_NAMES)}")
    return INPUT_NAMES[kind]


def train_factors(method_cls) -> tuple:
    """The method's ``train_resolutions`` (``(1,)``: full resolution only)."""
    return tuple(getattr(method_cls, "train_resolutions", (1,)) or (1,))


class FrozenInputs:
    """Cached features of one split. ``by_factor`` maps a downsampling factor to its
    features (1 = full resolution); ``query_factor``/``db_factor`` are the protocol's."""
    device = torch.device("cpu")

    def __init__(self, method_cls, split, by_factor: dict, query_factor=1, db_factor=1):
        self.method_cls, self.split, self.by_factor = method_cls, split, by_factor
        self.names = input_names(method_cls)
        absent = [n for n in self.names if n not in by_factor[1].arrays]
        if absent:
            raise BenchmarkError(f"method {method_cls.name!r} needs {', '.join(absent)}, which "
                                 f"cached frozen features do not hold (use --regime finetune)")
        self.factors = {"train": 1, "val": 1, "query": query_factor, "db": db_factor}
        self._train = by_factor[1].select(self.names, split.train_index)

    def shapes(self) -> dict[str, tuple]:
        return {n: tuple(v.shape[1:]) for n, v in self._train.items()}

    def index(self, role: str) -> np.ndarray:
        return getattr(self.split, f"{role}_index")

    def inputs(self, role: str):
        """(inputs, kept positions) of a role's images for encoding."""
        index = self.index(role)
        kept = np.arange(len(index))
        if role == "train" or (role == "db" and self.factors["db"] == 1
                               and np.array_equal(index, self.split.train_index)):
            return self._train, kept
        return self.by_factor[self.factors[role]].select(self.names, index), kept

    def training_set(self, labels: torch.Tensor, batch_size: int) -> TrainData:
        factors = train_factors(self.method_cls)
        by_factor = None
        if factors != (1,):
            missing = [f for f in factors if f not in self.by_factor]
            if missing:
                raise BenchmarkError(f"method {self.method_cls.name!r}: no features at training "
                                     f"resolution factor(s) {missing}")
            by_factor = {f: self._train if f == 1 else
                         self.by_factor[f].select(self.names, self.split.train_index) for f in factors}
        return TrainData(self._train, labels, batch_size, by_factor)

    def modules(self) -> list:
        return []

    def skipped(self) -> list[str]:
        return []


class ImageLoader:
    """Loads dataset images, dropping (and remembering) unreadable ones under ``skip``."""

    def __init__(self, dataset, on_bad_image: str):
        self.dataset, self.on_bad_image, self.skipped = dataset, on_bad_image, {}

    def __call__(self, index: int):
        try:
            return self.dataset.load(int(index))
        except DataError as exc:
            if self.on_bad_image != "skip":
                raise
            self.skipped[int(index)] = str(exc)
            return None


class FinetuneInputs:
    """The trainable backbone on the dataset's images (see the module docstring)."""

    def __init__(self, method_cls, split, dataset, spec: dict, request):
        self.method_cls, self.split, self.dataset = method_cls, split, dataset
        self.size, self.seed = spec["input_size"], spec["seed"]
        protocol = spec["protocol"]
        self.factors = {"train": 1, "val": 1, "query": protocol["resolution"],
                        "db": protocol["resolution_db"]}
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"weights": request.backbone_weights} if request.backbone_weights else {}
        self.backbone = build_backbone(spec["backbone"], **kwargs).to(self.device)
        self.names = input_names(method_cls)
        self.loader = ImageLoader(dataset, request.on_bad_image)
        self.mean, self.std = self.backbone.mean, self.backbone.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.backbone(images.to(self.device))
        if "images" in self.names:
            out["images"] = images.to(self.device)
        return {n: out[n] for n in self.names}

    def shapes(self) -> dict[str, tuple]:
        probe, _ = self.outputs(self.split.train_index[:2])
        return {n: tuple(v.shape[1:]) for n, v in probe.items()}

    def inputs(self, role: str):
        return self.outputs(getattr(self.split, f"{role}_index"), self.factors[role])

    @torch.no_grad()
    def outputs(self, index: np.ndarray, downsample: float = 1, batch_size: int = 32):
        """Centre-crop backbone outputs for dataset images ``index`` (eval mode) and the
        positions kept (unreadable images dropped under ``skip``)."""
        self.backbone.eval()
        transform = Transform(self.size, float(downsample))
        chunks, kept = [], []
        for start in range(0, len(index), batch_size):
            tensors = []
            for pos in range(start, min(len(index), start + batch_size)):
                img = self.loader(index[pos])
                if img is not None:
                    tensors.append(transform(img, self.mean, self.std))
                    kept.append(pos)
            if tensors:
                chunks.append({k: v.float().cpu() for k, v in self.forward(torch.stack(tensors)).items()})
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
    training set in the finetune regime)."""

    def __init__(self, source: FinetuneInputs, labels: torch.Tensor, batch_size: int):
        self.source, self.labels, self.batch_size = source, labels, batch_size
        self.factors = train_factors(source.method_cls)

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

    def batches(self, generator: torch.Generator, epoch: int):
        """Augmented batches in a seeded order (augmentation seeded per image and epoch)."""
        source, device = self.source, self.source.device
        order = torch.randperm(len(self.labels), generator=generator)
        for start in range(0, len(order), self.batch_size):
            images, keep, ratios = [], [], []
            for pos in order[start:start + self.batch_size].tolist():
                img = source.loader(source.split.train_index[pos])
                if img is None:
                    continue
                rng = np.random.default_rng([source.seed, epoch, pos])
                factor = self.factors[int(rng.integers(len(self.factors)))] if len(self.factors) > 1 else 1
                images.append(to_tensor(augment(img, source.size, rng, factor), source.mean, source.std))
                keep.append(pos)
                ratios.append(1.0 / factor)
            if len(keep) < 2:
                continue  # pairwise losses need two samples
            positions = torch.tensor(keep)
            batch = {"inputs": source.forward(torch.stack(images)),
                     "labels": self.labels[positions].to(device), "indices": positions.to(device)}
            if self.factors != (1,):
                batch["resolution"] = torch.tensor(ratios).to(device)
            yield batch
