"""The CUB-200-2011 file layout (``cub200``, and ``cub100``, the project's 100-species
subset with 0-based ids and an inverted split flag)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from registry import DATASETS

from ..errors import DataError
from .images import ImageSet, check_images, dataset_folder, hash_files, open_rgb


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
