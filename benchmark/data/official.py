"""Real fine-grained datasets in their official layouts (registry ``DATASETS``).

Each builder reads the folder ``<data root>/<FOLDER>`` exactly as the official archive
unpacks, validates it (missing metadata files and malformed lines raise ``DataError``
naming file and line; missing images and classes without training images too, unless
``strict=False``, which collects them in ``ImageSet.problems`` for ``data info``) and
returns an :class:`~benchmark.data.ImageSet`. Train/test are the official splits; where
an official validation split exists it is merged into train (the hashing convention).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from registry import DATASETS

from .images import ImageSet, check_images, dataset_folder, hash_files, open_rgb
from ..errors import DataError

FOLDERS = {"cub200": "CUB_200_2011", "aircraft": "fgvc-aircraft-2013b", "cars": "stanford_cars",
           "dogs": "stanford_dogs", "flowers102": "flowers102", "food101": "food-101",
           "nabirds": "nabirds", "vegfru": "vegfru", "sop": "Stanford_Online_Products",
           "market1501": "Market-1501-v15.09.15", "cub100": "cub100"}

def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path} is empty")
    return lines


def _fields(path: Path, count: int, header: bool = False) -> list[list[str]]:
    rows = []
    lines = _lines(path)
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        parts = line.split(maxsplit=count - 1)
        if len(parts) != count:
            raise DataError(f"{path} line {number}: expected {count} fields, got {line!r}")
        rows.append(parts)
    return rows


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"reading {path} needs scipy (pip install scipy)") from None
    try:
        return loadmat(path, squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise DataError(f"{path}: not a readable .mat file ({exc})") from None


def _finish(name: str, folder: Path, paths: list[str], label_names: list[str],
            is_train, strict: bool, classes: list[str] | None = None,
            classes_need_train: bool = True, **extra) -> ImageSet:
    """Index class names, check files, hash contents, build the ImageSet."""
    classes = classes or sorted(set(label_names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(label_names) - set(index))
    if unknown:
        raise DataError(f"{folder}: image labels not in the class list, first {unknown[0]!r}")
    labels = np.array([index[c] for c in label_names], dtype=np.int64)
    is_train = np.asarray(is_train, dtype=bool)
    problems = check_images(folder, paths, labels, is_train, classes, strict, classes_need_train)
    return ImageSet(name=name, classes=classes, paths=paths, labels=labels, is_train=is_train,
                    load=lambda i: open_rgb(folder / paths[i]),
                    identity=hash_files(folder, paths) if not problems else "unhashed",
                    problems=problems, root=folder, **extra)


@DATASETS.register_module(name="aircraft")
def build_aircraft(data_root=None, strict: bool = True, level: str = "variant") -> ImageSet:
    """FGVC-Aircraft 2013b: ``level`` variant (100 classes), family (70) or manufacturer
    (30); train = the official trainval list, test = test."""
    if level not in ("variant", "family", "manufacturer"):
        raise DataError(f"aircraft level must be variant, family or manufacturer, got {level!r}")
    folder = dataset_folder(data_root, FOLDERS["aircraft"])
    data = folder / "data"
    plural = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}[level]
    classes = _lines(data / f"{plural}.txt")
    paths, names, train = [], [], []
    for split in ("trainval", "test"):
        for image_id, label in _fields(data / f"images_{level}_{split}.txt", 2):
            paths.append(f"data/images/{image_id}.jpg")
            names.append(label)
            train.append(split == "trainval")
    suffix = "" if level == "variant" else f"-{level}"
    return _finish(f"aircraft{suffix}", folder, paths, names, train, strict, classes)


@DATASETS.register_module(name="cars")
def build_cars(data_root=None, strict: bool = True) -> ImageSet:
    """Stanford Cars (196 classes): devkit/cars_meta.mat, devkit/cars_train_annos.mat,
    cars_test_annos_withlabels.mat (in the folder or devkit/), cars_train/, cars_test/."""
    folder = dataset_folder(data_root, FOLDERS["cars"])
    classes = [str(c) for c in _loadmat(folder / "devkit" / "cars_meta.mat")["class_names"]]
    test_annos = folder / "cars_test_annos_withlabels.mat"
    if not test_annos.is_file():
        test_annos = folder / "devkit" / "cars_test_annos_withlabels.mat"
    paths, names, train = [], [], []
    for mat, subdir, is_train in ((folder / "devkit" / "cars_train_annos.mat", "cars_train", True),
                                  (test_annos, "cars_test", False)):
        annotations = _loadmat(mat)["annotations"]
        for row in np.atleast_1d(annotations):
            paths.append(f"{subdir}/{row['fname']}")
            names.append(classes[int(row["class"]) - 1])
            train.append(is_train)
    return _finish("cars", folder, paths, names, train, strict, classes)


@DATASETS.register_module(name="dogs")
def build_dogs(data_root=None, strict: bool = True) -> ImageSet:
    """Stanford Dogs (120 breeds): train_list.mat / test_list.mat and Images/."""
    folder = dataset_folder(data_root, FOLDERS["dogs"])
    paths, names, train = [], [], []
    for split in ("train", "test"):
        mat = _loadmat(folder / f"{split}_list.mat")
        for file in np.atleast_1d(mat["file_list"]):
            rel = str(file)
            paths.append(f"Images/{rel}")
            names.append(rel.split("/")[0])
            train.append(split == "train")
    return _finish("dogs", folder, paths, names, train, strict)


@DATASETS.register_module(name="flowers102")
def build_flowers102(data_root=None, strict: bool = True) -> ImageSet:
    """Oxford Flowers-102: jpg/, imagelabels.mat, setid.mat; train = trnid + valid."""
    folder = dataset_folder(data_root, FOLDERS["flowers102"])
    labels = np.atleast_1d(_loadmat(folder / "imagelabels.mat")["labels"]).astype(int)
    setid = _loadmat(folder / "setid.mat")
    train_ids = set(np.concatenate([np.atleast_1d(setid["trnid"]), np.atleast_1d(setid["valid"])]).tolist())
    ids = sorted(train_ids | set(np.atleast_1d(setid["tstid"]).tolist()))
    if max(ids) > len(labels):
        raise DataError(f"{folder / 'setid.mat'}: image id {max(ids)} beyond imagelabels.mat")
    paths = [f"jpg/image_{i:05d}.jpg" for i in ids]
    names = [f"{labels[i - 1]:03d}" for i in ids]
    return _finish("flowers102", folder, paths, names, [i in train_ids for i in ids], strict)


@DATASETS.register_module(name="food101")
def build_food101(data_root=None, strict: bool = True) -> ImageSet:
    """Food-101: meta/classes.txt, meta/train.txt, meta/test.txt, images/<class>/<id>.jpg."""
    folder = dataset_folder(data_root, FOLDERS["food101"])
    classes = _lines(folder / "meta" / "classes.txt")
    paths, names, train = [], [], []
    for split in ("train", "test"):
        for line in _lines(folder / "meta" / f"{split}.txt"):
            if "/" not in line:
                raise DataError(f"{folder / 'meta' / f'{split}.txt'}: expected <class>/<id>, got {line!r}")
            paths.append(f"images/{line}.jpg")
            names.append(line.split("/")[0])
            train.append(split == "train")
    return _finish("food101", folder, paths, names, train, strict, classes)


@DATASETS.register_module(name="nabirds")
def build_nabirds(data_root=None, strict: bool = True) -> ImageSet:
    """NABirds: images.txt, image_class_labels.txt, train_test_split.txt (1 = train),
    classes.txt; keys are image UUIDs; the classes are those images use (555)."""
    folder = dataset_folder(data_root, FOLDERS["nabirds"])
    images = dict(_fields(folder / "images.txt", 2))
    labels = dict(_fields(folder / "image_class_labels.txt", 2))
    split = dict(_fields(folder / "train_test_split.txt", 2))
    class_names = dict(_fields(folder / "classes.txt", 2))
    for table, fname in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
        if set(table) != set(images):
            raise DataError(f"{folder / fname}: image ids differ from images.txt")
    ids = sorted(images)
    bad = sorted({labels[i] for i in ids} - set(class_names))
    if bad:
        raise DataError(f"{folder / 'image_class_labels.txt'}: class id {bad[0]} not in classes.txt")
    names = [f"{labels[i]} {class_names[labels[i]]}" for i in ids]
    return _finish("nabirds", folder, [f"images/{images[i]}" for i in ids], names,
                   [split[i] == "1" for i in ids], strict)


@DATASETS.register_module(name="vegfru")
def build_vegfru(data_root=None, strict: bool = True) -> ImageSet:
    """VegFru (292 classes): vegfru_list/vegfru_{train,val,test}.txt with '<path> <label>'
    lines; train = train + val."""
    folder = dataset_folder(data_root, FOLDERS["vegfru"])
    paths, names, train = [], [], []
    for split in ("train", "val", "test"):
        for rel, label in _fields(folder / "vegfru_list" / f"vegfru_{split}.txt", 2):
            paths.append(rel)
            names.append(f"{int(label):03d} {Path(rel).parent.name}")
            train.append(split != "test")
    return _finish("vegfru", folder, paths, names, train, strict)


@DATASETS.register_module(name="sop")
def build_sop(data_root=None, strict: bool = True) -> ImageSet:
    """Stanford Online Products with its 12 *super-class* labels and the official
    Ebay_train/Ebay_test split. (Its 22,634 product classes are disjoint between train and
    test, the metric-learning protocol, which query = test / database = train cannot use.)"""
    folder = dataset_folder(data_root, FOLDERS["sop"])
    paths, names, train = [], [], []
    for split in ("train", "test"):
        for _, _, super_id, rel in _fields(folder / f"Ebay_{split}.txt", 4, header=True):
            paths.append(rel)
            names.append(f"{int(super_id):02d} {rel.split('/')[0]}")
            train.append(split == "train")
    return _finish("sop", folder, paths, names, train, strict)


MARKET_NAME = re.compile(r"^(-?\d+)_c(\d)s\d_\d+_\d+\.jpg$")


@DATASETS.register_module(name="market1501")
def build_market1501(data_root=None, strict: bool = True) -> ImageSet:
    """Market-1501: train = bounding_box_train, queries = query/, database (gallery) =
    bounding_box_test. Class names are the person ids ("-1" = junk, "0000" = distractor),
    camera ids come from the file names (``0002_c1s1_000451_03.jpg``: person 2, camera 1)."""
    folder = dataset_folder(data_root, FOLDERS["market1501"])
    paths, names, roles, cameras = [], [], [], []
    for subdir, role in (("bounding_box_train", "train"), ("query", "query"),
                         ("bounding_box_test", "gallery")):
        if not (folder / subdir).is_dir():
            raise DataError(f"missing folder {folder / subdir}")
        for file in sorted((folder / subdir).glob("*.jpg")):
            match = MARKET_NAME.match(file.name)
            if not match:
                raise DataError(f"{file}: not a Market-1501 file name (<pid>_c<cam>s<seq>_<frame>_<box>.jpg)")
            paths.append(f"{subdir}/{file.name}")
            names.append(match.group(1))
            roles.append(role)
            cameras.append(int(match.group(2)))
    roles = np.array(roles)
    if not (roles == "train").any() or not (roles == "query").any():
        raise DataError(f"{folder}: no training or query images found")
    classes = sorted(set(names), key=int)
    return _finish("market1501", folder, paths, names, roles == "train", strict, classes,
                   classes_need_train=False, query_mask=roles == "query",
                   db_mask=roles == "gallery", cameras=np.array(cameras, dtype=np.int64))
