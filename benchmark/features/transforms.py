"""Image -> normalised tensor, the same for every method: the centre crop of evaluation
and the frozen cache (:class:`Transform`) and the finetune regime's training augmentation
(:func:`augment`). Both apply the resolution protocol's shrink-and-enlarge."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def _shrink_and_enlarge(img: Image.Image, size: int, factor: float) -> Image.Image:
    """Downsample by ``factor`` and resize back (a low-resolution image at full size)."""
    if factor <= 1:
        return img
    low = max(1, round(size / factor))
    return img.resize((low, low), Image.BILINEAR).resize((size, size), Image.BILINEAR)


def _resize_shorter(img: Image.Image, short: int, size: int) -> Image.Image:
    w, h = img.size
    scale = short / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


def to_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@dataclass(frozen=True)
class Transform:
    """Shorter side -> ``input_size``, centre crop; optionally downsample by ``downsample``
    first and upsample back (the resolution protocol's low-resolution images)."""
    input_size: int = 224
    downsample: float = 1.0

    def __call__(self, img: Image.Image, mean, std) -> torch.Tensor:
        size = self.input_size
        img = _resize_shorter(img, size, size)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return to_tensor(_shrink_and_enlarge(img, size, self.downsample), mean, std)


def augment(img: Image.Image, size: int, rng: np.random.Generator, factor: int = 1) -> Image.Image:
    """Resize (shorter side size*256/224), random crop, flip; then the resolution factor."""
    img = _resize_shorter(img, round(size * 256 / 224), size)
    w, h = img.size
    left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    img = img.crop((left, top, left + size, top + size))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _shrink_and_enlarge(img, size, factor)
