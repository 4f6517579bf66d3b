"""Your own images as a dataset: ``--dataset folder:PATH`` and ``--dataset csv:FILE``.

* ``folder:PATH``, the ImageFolder layout: ``PATH/train/<class>/<image>``,
  ``PATH/test/<class>/<image>`` and optionally ``PATH/val/<class>/<image>``; the class is
  the folder name (images may sit in sub-folders of it). Files without an image suffix and
  hidden files are ignored, as torchvision's ImageFolder does.
* ``csv:FILE``: a header naming the columns ``path``, ``label`` and ``split`` (any order;
  other columns ignored), then one image a row; ``path`` is relative to the file's folder,
  ``split`` is ``train``, ``test`` or ``val``.

A ``val`` split is merged into train, as the official loaders merge an official validation
split (the hashing convention: query = test, database = train; model selection carves its
validation split from train with ``--val-frac``). Validated like the official loaders: a
split without images, a test class absent from train, a duplicate path and a missing image
file are one-line ``DataError``s (``strict=False`` lists them for ``data info``); an
unreadable image fails the runs that need it or is left out (``--on-bad-image``). The
dataset is named ``folder-<folder name>-<fingerprint8>`` (``csv-<file stem>-...``), the
fingerprint being the content hash of :meth:`ImageSet.fingerprint` (image bytes, paths,
labels, split), so a leaderboard names it by what it holds.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from registry import DATASETS
from registry.names import safe_file_name

from ..errors import DataError
from .images import ImageSet, check_images, hash_files, open_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm", ".pbm"}
SPLITS = ("train", "test", "val")
NAME_PART = 32  # characters of the folder / file name kept in the dataset name


def _given(kind: str, path, folder: bool) -> Path:
    if not path:
        raise DataError(f"--dataset {kind}:PATH needs a path, e.g. {kind}:~/data/mybirds"
                        + ("" if folder else ".csv"))
    given = Path(path).expanduser()
    if folder and not given.is_dir():
        raise DataError(f"folder:{path}: {given} is not a folder")
    if not folder and not given.is_file():
        raise DataError(f"csv:{path}: no such file {given}")
    return given.resolve()


def _images_under(split_dir: Path, root: Path) -> list[tuple[str, str, str]]:
    """(path relative to ``root``, class, split) of every image in ``split_dir/<class>/``."""
    rows = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES \
                    and not any(part.startswith(".") for part in file.relative_to(class_dir).parts):
                rows.append((file.relative_to(root).as_posix(), class_dir.name, split_dir.name))
    return rows


@DATASETS.register_module(name="folder")
def build_folder(data_root=None, strict: bool = True, path=None) -> ImageSet:
    """``--dataset folder:PATH`` (see the module docstring); ``data_root`` is not used."""
    root = _given("folder", path, folder=True)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"folder:{root}: no {split}/ folder (layout: {root}/train/<class>/"
                            f"<image>, {root}/test/<class>/<image>, optional val/)")
    rows = [row for split in SPLITS if (root / split).is_dir()
            for row in _images_under(root / split, root)]
    return _image_set("folder", root.name, root, rows, [], strict, f"folder:{root}")


def _csv_rows(file: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The rows of a ``path,label,split`` file and its duplicate-path problems."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        lines = list(csv.reader(f))
    header = [h.strip().lower() for h in lines[0]] if lines else []
    missing = [c for c in ("path", "label", "split") if c not in header]
    if missing:
        raise DataError(f"{file} line 1: the header must name the columns path,label,split "
                        f"(missing {', '.join(missing)})")
    at = {c: header.index(c) for c in ("path", "label", "split")}
    rows, problems, first = [], [], {}
    for number, line in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in line):
            continue
        if len(line) < len(header):
            raise DataError(f"{file} line {number}: expected {len(header)} fields, got {len(line)}")
        path, label, split = (line[at[c]].strip() for c in ("path", "label", "split"))
        if split not in SPLITS:
            raise DataError(f"{file} line {number}: split must be train, test or val, got {split!r}")
        if not path or not label:
            raise DataError(f"{file} line {number}: empty {'path' if not path else 'label'}")
        if Path(path).is_absolute():
            raise DataError(f"{file} line {number}: path {path!r} must be relative to the file's folder")
        key = os.path.normpath(path)
        if key in first:
            problems.append(f"{file} line {number}: duplicate path {path!r} (first on line {first[key]})")
            continue
        first[key] = number
        rows.append((Path(key).as_posix(), label, split))
    return rows, problems


@DATASETS.register_module(name="csv")
def build_csv(data_root=None, strict: bool = True, path=None) -> ImageSet:
    """``--dataset csv:FILE`` (see the module docstring); ``data_root`` is not used."""
    file = _given("csv", path, folder=False)
    rows, problems = _csv_rows(file)
    return _image_set("csv", file.stem, file.parent, rows, problems, strict, f"csv:{file}")


def _split_problems(rows, where: str) -> list[str]:
    """Empty splits and test classes without training images, one line each."""
    problems = [f"{where}: split {split!r} has no images" for split in ("train", "test")
                if not any(s == split or (split == "train" and s == "val") for _, _, s in rows)]
    trained = {c for _, c, s in rows if s != "test"}
    absent = sorted({c for _, c, s in rows if s == "test"} - trained)
    if absent:
        problems.append(f"{where}: {len(absent)} test class(es) absent from train, first "
                        f"{absent[0]!r}")
    return problems


def _image_set(kind: str, stem: str, root: Path, rows, problems: list[str], strict: bool,
               where: str) -> ImageSet:
    """Check the rows, hash the images, name the set by its content."""
    problems = _split_problems(rows, where) + problems
    if strict and problems:
        raise DataError(problems[0])
    paths = [p for p, _, _ in rows]
    classes = sorted({c for _, c, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, c, _ in rows], dtype=np.int64)
    is_train = np.array([s != "test" for _, _, s in rows], dtype=bool)
    problems += check_images(root, paths, labels, is_train, classes, strict,
                             classes_need_train=False)
    dataset = ImageSet(name=kind, classes=classes, paths=paths, labels=labels, is_train=is_train,
                       load=lambda i: open_rgb(root / paths[i]),
                       identity=hash_files(root, paths) if not problems else "unhashed",
                       problems=problems, root=root)
    dataset.name = f"{kind}-{safe_file_name(stem)[:NAME_PART]}-{dataset.fingerprint()[:8]}"
    return dataset
