"""``synthetic-fg``: a procedurally generated fine-grained set that needs no files."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from registry import DATASETS

from ..errors import BenchmarkError
from .images import ImageSet


SYNTHETIC_VERSION = 1
_PALETTE = [(200, 60, 50), (60, 120, 200), (230, 190, 60), (90, 170, 90), (150, 90, 180),
            (240, 140, 40), (40, 40, 40), (220, 220, 220)]


def render_synthetic(seed: int, index: int, label: int, size: int) -> Image.Image:
    """One 'bird': genus = body colour (label // 4); species = a small mark (label % 4
    picks its place: head, wing, tail, belly; the genus-relative colour differs too).
    Pose (angle, scale, offset) and the textured background vary per image."""
    rng = np.random.default_rng([seed, index])
    genus, species = divmod(label, 4)
    noise = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
    background = Image.fromarray(noise).resize((size, size), Image.BILINEAR)
    background = background.filter(ImageFilter.GaussianBlur(size / 32))
    bird = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(bird)
    c, s = size / 2, size / 64
    body = _PALETTE[genus % len(_PALETTE)]
    draw.ellipse([c - 18 * s, c - 10 * s, c + 18 * s, c + 10 * s], fill=body + (255,))
    draw.ellipse([c + 10 * s, c - 16 * s, c + 24 * s, c - 2 * s], fill=body + (255,))
    draw.polygon([(c - 18 * s, c), (c - 30 * s, c - 8 * s), (c - 30 * s, c + 8 * s)],
                 fill=body + (255,))
    spots = [(c + 17 * s, c - 9 * s), (c - 2 * s, c - 4 * s), (c - 24 * s, c), (c, c + 6 * s)]
    x, y = spots[species]
    mark = _PALETTE[(genus + 1 + species // 2) % len(_PALETTE)]
    r = 3 * s
    draw.rectangle([x - r, y - r, x + r, y + r], fill=mark + (255,))
    angle = float(rng.uniform(-35, 35))
    scale = float(rng.uniform(0.75, 1.1))
    bird = bird.rotate(angle, resample=Image.BILINEAR)
    new = max(8, int(size * scale))
    bird = bird.resize((new, new), Image.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(-size // 8, size // 8 + 1, size=2))
    background.paste(bird, ((size - new) // 2 + dx, (size - new) // 2 + dy), bird)
    return background


@DATASETS.register_module(name="synthetic-fg")
def build_synthetic_fg(data_root=None, strict: bool = True, num_classes: int = 24, train_per_class: int = 20,
                       test_per_class: int = 10, image_size: int = 64,
                       seed: int = 0) -> ImageSet:
    """Procedurally generated fine-grained set; needs no files."""
    if num_classes < 2 or train_per_class < 1 or test_per_class < 1 or image_size < 16:
        raise BenchmarkError("synthetic-fg needs num_classes >= 2, train/test_per_class >= 1, "
                             "image_size >= 16")
    per_class = train_per_class + test_per_class
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    is_train = np.tile(np.arange(per_class) < train_per_class, num_classes)
    paths = [f"synthetic/{i:06d}" for i in range(len(labels))]
    spec = (f"synthetic-fg v{SYNTHETIC_VERSION} classes={num_classes} train={train_per_class} "
            f"test={test_per_class} size={image_size} seed={seed}")
    return ImageSet(name="synthetic-fg", classes=[f"species_{c:03d}" for c in range(num_classes)],
                    paths=paths, labels=labels, is_train=is_train,
                    load=lambda i: render_synthetic(seed, i, int(labels[i]), image_size),
                    identity=spec)
