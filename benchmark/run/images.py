"""Image batches for the finetune regime, decoded and transformed in DataLoader workers.

An item is keyed by ``(image index, training position, epoch, downsample)``: ``epoch >= 0``
is a training augmentation (``features.transforms.augment``) drawn from
``numpy.random.default_rng([seed, epoch, position])``, so an image's augmentation depends
on the run seed, the epoch and the image only, never on which worker made it or how many
there are; ``epoch < 0`` is the evaluation centre crop at ``downsample``. The DataLoader is
created once per run (persistent workers), gets its batches of keys from
:class:`KeyBatches`, uses its own generator (never the global torch RNG) and pins memory
for a GPU. An unreadable image comes back as its error message; the main process decides
(``ImageLoader.settle``) whether that fails the run or skips the image.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..features.transforms import Transform, augment, to_tensor


class ImageItems(Dataset):
    """Key -> (image tensor or None, position, resolution ratio, error message or None)."""

    def __init__(self, dataset, size: int, mean, std, seed: int, factors: tuple):
        self.dataset, self.size, self.mean, self.std = dataset, size, mean, std
        self.seed, self.factors = seed, factors

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, pos, epoch, downsample = key
        try:
            img = self.dataset.load(int(index))
        except DataError as exc:
            return None, pos, 1.0, (int(index), str(exc))
        if epoch < 0:
            return Transform(self.size, float(downsample))(img, self.mean, self.std), pos, 1.0, None
        rng = np.random.default_rng([self.seed, epoch, pos])
        factor = self.factors[int(rng.integers(len(self.factors)))] if len(self.factors) > 1 else 1
        return to_tensor(augment(img, self.size, rng, factor), self.mean, self.std), pos, 1.0 / factor, None


def collate(items: list) -> dict:
    """Readable images stacked, with their positions and ratios; (image index, error) of
    the unreadable ones."""
    good = [item for item in items if item[0] is not None]
    return {"images": torch.stack([item[0] for item in good]) if good else None,
            "positions": torch.tensor([item[1] for item in good], dtype=torch.long),
            "ratios": torch.tensor([item[2] for item in good], dtype=torch.float32),
            "errors": [item[3] for item in items if item[0] is None]}


class KeyBatches:
    """The batch sampler: yields whatever batches of keys were set last."""

    def __init__(self):
        self.batches: list[list[tuple]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageStream:
    """One run's image DataLoader; ``__call__(keys)`` yields collated batches."""

    def __init__(self, items: ImageItems, workers: int, device: torch.device, seed: int):
        self.sampler = KeyBatches()
        self.loader = DataLoader(items, batch_sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers else None,
                                 generator=torch.Generator().manual_seed(seed))

    def __call__(self, batches: list[list[tuple]]):
        self.sampler.batches = batches
        if batches:
            yield from self.loader


class ImageLoader:
    """What happens to an unreadable image: the run fails (``fail``) or the image is left
    out and remembered (``skip``)."""

    def __init__(self, on_bad_image: str):
        self.on_bad_image, self.skipped = on_bad_image, {}

    def settle(self, errors: list[tuple[int, str]]) -> None:
        for index, message in errors:
            if self.on_bad_image != "skip":
                raise DataError(message)
            self.skipped[int(index)] = message
