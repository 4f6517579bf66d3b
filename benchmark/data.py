"""Datasets: folder validation, CUB-200-2011-layout parsing, the synthetic fine-grained set.

A dataset is an :class:`ImageSet`: class names, one label and one train/test flag per
image, and a loader that returns a PIL image. Builders are registered in
``registry.DATASETS`` and called as ``build(data_root=..., **options)``.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from registry import DATASETS

from .errors import BenchmarkError, DataError


@dataclass
class ImageSet:
    name: str
    classes: list[str]
    paths: list[str]            # relative to ``root`` (or a synthetic id)
    labels: np.ndarray          # int64, 0..C-1
    is_train: np.ndarray        # bool
    load: Callable[[int], Image.Image] = field(repr=False)
    identity: str = ""          # what the images are (content hash / generator spec)
    # Datasets with their own query/gallery split (re-ID): which images are queries and
    # which form the database; None means query = test split, database = train split.
    query_mask: np.ndarray | None = None
    db_mask: np.ndarray | None = None
    cameras: np.ndarray | None = None   # int camera id per image (re-ID), else None
    #: problems found while loading with ``strict=False`` (``data info``); empty otherwise
    problems: list = field(default_factory=list)
    root: Path | None = None            # the folder ``paths`` are relative to (None: generated)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, keep: np.ndarray, suffix: str) -> "ImageSet":
        """The images where ``keep`` is true (labels re-indexed to the kept classes)."""
        index = np.flatnonzero(keep)
        kept_classes = np.unique(self.labels[index])
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[kept_classes] = np.arange(len(kept_classes))
        def part(array):
            return None if array is None else array[index]
        return ImageSet(name=f"{self.name}{suffix}", classes=[self.classes[c] for c in kept_classes],
                        paths=[self.paths[i] for i in index], labels=remap[self.labels[index]],
                        is_train=self.is_train[index], load=lambda i: self.load(int(index[i])),
                        identity=f"{self.identity}|subset:{hashlib.sha256(index.tobytes()).hexdigest()}",
                        query_mask=part(self.query_mask), db_mask=part(self.db_mask),
                        cameras=part(self.cameras))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.identity.encode())
        digest.update(self.labels.tobytes())
        digest.update(self.is_train.tobytes())
        for extra in (self.query_mask, self.db_mask, self.cameras):
            if extra is not None:
                digest.update(np.ascontiguousarray(extra).tobytes())
        return digest.hexdigest()[:16]


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """``--data-root``, else ``$BENCHMARK_DATA_ROOT``; a clear error when neither is usable."""
    root = data_root or os.environ.get("BENCHMARK_DATA_ROOT")
    if not root:
        raise BenchmarkError("no data root: pass --data-root DIR or set BENCHMARK_DATA_ROOT "
                             "(the folder that holds e.g. cub100/); "
                             "--dataset synthetic-fg needs no data")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} is not a folder (from "
                        f"{'--data-root' if data_root else 'BENCHMARK_DATA_ROOT'})")
    return path


def dataset_folder(data_root, folder_name: str) -> Path:
    root = resolve_data_root(data_root)
    folder = root / folder_name
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} not found (looked in data root {root})")
    return folder


def build_dataset(name: str, data_root=None, **options) -> ImageSet:
    from . import datasets  # noqa: F401 - registers the other real datasets
    if name not in DATASETS.module_dict:
        known = ", ".join(sorted(DATASETS.module_dict))
        raise BenchmarkError(f"unknown dataset {name!r}; known datasets: {known}")
    return DATASETS.get(name)(data_root=data_root, **options)


def hash_files(root: Path, paths: list[str]) -> str:
    digest = hashlib.sha256()
    for rel in paths:
        digest.update(rel.encode())
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()


def open_rgb(path: Path) -> Image.Image:
    """Read an image fully (so truncation shows here) or raise DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from exc


# ---------------------------------------------------------------- CUB-200-2011 layout

def _read_table(path: Path, columns: int) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = re.split(r"\s*,\s*|\s+", line.strip(), maxsplit=columns - 1)
        if len(parts) != columns or not parts[0].isdigit():
            raise DataError(f"{path} line {number}: expected {columns} fields '<id> <value>', "
                            f"got {line.strip()!r}")
        rows.append(parts)
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def _id_map(path: Path, first_id: int) -> dict[int, str]:
    rows = _read_table(path, 2)
    table = {int(i): value for i, value in rows}
    if len(table) != len(rows):
        raise DataError(f"{path}: duplicate ids")
    expected = set(range(first_id, first_id + len(table)))
    if set(table) != expected:
        raise DataError(f"{path}: ids must run {first_id}..{first_id + len(table) - 1} "
                        f"(found {min(table)}..{max(table)})")
    return table


def check_images(folder: Path, paths: list[str], labels: np.ndarray, is_train: np.ndarray,
                 class_names: list[str], strict: bool = True,
                 classes_need_train: bool = True) -> list[str]:
    """Missing image files and classes without a training image, as one line each;
    ``strict`` raises ``DataError`` with the first instead."""
    problems = []
    missing = [p for p in paths if not (folder / p).is_file()]
    if missing:
        problems.append(f"{folder}: {len(missing)} image file(s) listed are missing, first "
                        f"{folder / missing[0]}")
    if classes_need_train:
        empty = sorted(set(range(len(class_names))) - set(labels[is_train].tolist()))
        if empty:
            problems.append(f"{folder}: {len(empty)} class(es) have no training image, first "
                            f"{class_names[empty[0]]!r}")
    if strict and problems:
        raise DataError(problems[0])
    return problems


def load_cub_layout(folder: Path, name: str, first_id: int, train_flag: str,
                    strict: bool = True) -> ImageSet:
    """Parse a CUB-200-2011-layout folder.

    ``first_id`` is the smallest image/class id (1 in the official files, 0 in cub100);
    ``train_flag`` is the split value that marks training images ("1" officially, "0" in
    cub100, whose flag is inverted; see its SOURCE.md).
    """
    classes = _id_map(folder / "classes.txt", first_id)
    images = _id_map(folder / "images.txt", first_id)
    labels = _id_map(folder / "image_class_labels.txt", first_id)
    split = _id_map(folder / "train_test_split.txt", first_id)
    for table, fname in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
        if set(table) != set(images):
            raise DataError(f"{folder / fname}: image ids differ from images.txt")
    ids = sorted(images)
    paths = [f"images/{images[i]}" for i in ids]
    try:
        label_ids = np.array([int(labels[i]) for i in ids], dtype=np.int64) - first_id
    except ValueError as exc:
        raise DataError(f"{folder / 'image_class_labels.txt'}: non-integer class id") from exc
    bad = (label_ids < 0) | (label_ids >= len(classes))
    if bad.any():
        raise DataError(f"{folder / 'image_class_labels.txt'}: image id {ids[int(np.argmax(bad))]} "
                        f"has a class id outside classes.txt")
    flags = {split[i] for i in ids}
    if not flags <= {"0", "1"}:
        raise DataError(f"{folder / 'train_test_split.txt'}: flags must be 0/1, found "
                        f"{sorted(flags - {'0', '1'})}")
    is_train = np.array([split[i] == train_flag for i in ids])
    class_names = [classes[first_id + c] for c in range(len(classes))]
    problems = check_images(folder, paths, label_ids, is_train, class_names, strict)
    return ImageSet(name=name, classes=class_names, paths=paths, labels=label_ids,
                    is_train=is_train, load=lambda i: open_rgb(folder / paths[i]),
                    identity=hash_files(folder, paths) if not problems else "unhashed",
                    problems=problems, root=folder)


@DATASETS.register_module(name="cub100")
def build_cub100(data_root=None, strict: bool = True) -> ImageSet:
    """Real 100-species CUB subset (0-based ids, split flag 0 = train)."""
    return load_cub_layout(dataset_folder(data_root, "cub100"), "cub100", 0, "0", strict)


@DATASETS.register_module(name="cub200")
def build_cub200(data_root=None, strict: bool = True) -> ImageSet:
    """Official CUB-200-2011 (1-based ids, split flag 1 = train)."""
    return load_cub_layout(dataset_folder(data_root, "CUB_200_2011"), "cub200", 1, "1", strict)


# ---------------------------------------------------------------- synthetic-fg

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
