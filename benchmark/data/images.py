"""A dataset as the harness sees it (:class:`ImageSet`), where its files are, and the
checks every loader shares (readable images, classes with training images).

Dataset builders are registered in ``registry.DATASETS`` (built-ins by the modules named in
its ``locations``, third-party ones through the ``register_datasets`` hook) and built with
:func:`build_dataset`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from registry import DATASETS, load_plugins
from registry.names import check_name

from ..errors import BenchmarkError, DataError


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


#: ``--dataset KIND:PATH``: your own images (``data/folder.py``: folder:PATH, csv:FILE)
PATH_DATASETS = ("folder", "csv")


def registered_name(name: str) -> tuple[str, dict]:
    """The registry name of a ``--dataset`` value and the options it carries:
    ``folder:PATH`` / ``csv:FILE`` are the ``folder`` / ``csv`` builders with ``path``."""
    kind, sep, path = name.partition(":")
    return (kind, {"path": path}) if sep and kind in PATH_DATASETS else (name, {})


def build_dataset(name: str, data_root=None, **options) -> ImageSet:
    """Build the dataset registered as ``name`` (built-in or from a plugin), or your own
    images for ``folder:PATH`` / ``csv:FILE`` (:func:`registered_name`)."""
    load_plugins()  # third-party datasets register through the plugin hooks
    DATASETS.import_from_location()
    name, given = registered_name(name)
    options = {**given, **options}
    if name not in DATASETS.module_dict:
        known = ", ".join(sorted(DATASETS.module_dict))
        raise BenchmarkError(f"unknown dataset {name!r}; known datasets: {known}")
    dataset = DATASETS.module_dict[name](data_root=data_root, **options)  # not .build: "a.b" is no scope
    check_name(f"dataset {name}: its builder's ImageSet", dataset.name)  # a plugin names it
    return dataset


def build_grid_dataset(name: str, data_root=None, max_classes: int | None = None) -> ImageSet:
    """:func:`build_dataset`, keeping only the first ``max_classes`` classes when given (a
    separate dataset: its name gets ``-first{K}``), as ``run --max-classes`` asks."""
    dataset = build_dataset(name, data_root=data_root)
    if max_classes and max_classes < dataset.num_classes:
        dataset = dataset.subset(dataset.labels < max_classes, f"-first{max_classes}")
    return dataset


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
