"""``python -m benchmark data info|download``: inspect a dataset folder, fetch an archive."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .images import build_dataset, resolve_data_root
from .official import FOLDERS
from ..errors import BenchmarkError, DataError


# name -> list of (url, md5); the archives unpack into the data root (FOLDERS[name]).
OFFICIAL_ARCHIVES = {
    "cub200": [("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78")],
    "aircraft": [("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
                  "fgvc-aircraft-2013b.tar.gz", "d4acdd33327262359767eeaa97a4f732")],
    "flowers102": [("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                    "52808999861908f626f3c1f4e79d11fa"),
                   ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                    "e0620be6f572b9609742df49c70aed4d"),
                   ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
                    "a5357ecc9cb78c4bef273ce3793fc85c")],
    "food101": [("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                 "85eeb15f3717b99a5da872d97d918f87")],
}
NO_ARCHIVE = {
    "cub100": "cub100 is a subset made for this project; it is not downloadable",
    "cars": "the official Stanford Cars URL is gone; place the devkit, cars_train/ and "
            "cars_test/ (with cars_test_annos_withlabels.mat) in stanford_cars/",
    "dogs": "download images.tar and lists.tar from the Stanford Dogs page and unpack both "
            "into stanford_dogs/",
    "nabirds": "NABirds is distributed after accepting the Cornell Lab's terms of use",
    "vegfru": "VegFru is distributed from its authors' file-sharing link",
    "sop": "unpack Stanford_Online_Products.zip from the Stanford CVGL page",
    "market1501": "Market-1501 is distributed from its authors' file-sharing link",
    "synthetic-fg": "synthetic-fg is generated; it needs no download",
}


def info(name: str, data_root=None, check_images: bool = True, out=print) -> int:
    """Print counts per split and every problem found; return the number of problems."""
    try:
        ds = build_dataset(name, data_root=data_root, strict=False)
    except DataError as exc:  # the folder's structure itself is broken
        out(f"{name}: cannot be read")
        out(f"problem: {exc}")
        return 1
    problems = list(ds.problems)
    out(f"{name}: {len(ds)} images, {ds.num_classes} classes")
    roles = {"train": ds.is_train}
    if ds.query_mask is not None:
        roles.update(query=ds.query_mask, gallery=ds.db_mask)
    else:
        roles["test"] = ~ds.is_train
    for role, mask in roles.items():
        present = len(np.unique(ds.labels[mask]))
        out(f"  {role:<8} {int(mask.sum()):>7} images  {present:>5} classes")
    if check_images:
        bad = []
        for i in range(len(ds)):
            if ds.root is not None and not (ds.root / ds.paths[i]).is_file():
                continue  # already reported as missing
            try:
                ds.load(i)
            except DataError as exc:
                bad.append(str(exc))
        problems += bad
    for line in problems:
        out(f"problem: {line}")
    out(f"{len(problems)} problem(s)" + ("" if check_images else " (images not opened: --no-images)"))
    return len(problems)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack tar/zip into ``target``, refusing members that would land outside it."""
    root = target.resolve()
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if not (root / member.name).resolve().is_relative_to(root) or member.islnk() or member.issym():
                    raise DataError(f"{archive}: unsafe member {member.name!r}")
            tar.extractall(target, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: unsafe member {member!r}")
            zf.extractall(target)
    # anything else (e.g. a .mat file) is kept as it is


def download(name: str, data_root=None, url: str | None = None, md5: str | None = None,
             out=print) -> list[Path]:
    """Fetch the official archive(s) of ``name`` (or ``url`` with its ``md5``), verify the
    MD5, unpack into the data root; return the files fetched."""
    if url:
        if not md5:
            raise BenchmarkError("--url needs --md5 (the archive's checksum)")
        archives = [(url, md5)]
    elif name in OFFICIAL_ARCHIVES:
        archives = OFFICIAL_ARCHIVES[name]
    elif name in NO_ARCHIVE:
        raise BenchmarkError(f"{name}: no official archive to download ({NO_ARCHIVE[name]})")
    else:
        raise BenchmarkError(f"unknown dataset {name!r}; downloadable: {', '.join(OFFICIAL_ARCHIVES)}")
    root = resolve_data_root(data_root)
    target = root / FOLDERS[name] if name == "flowers102" else root
    target.mkdir(parents=True, exist_ok=True)
    fetched = []
    for link, expected in archives:
        file = target / (Path(urlparse(link).path).name or f"{name}.download")
        partial = file.with_name(file.name + ".part")
        out(f"fetching {link}")
        try:
            with urllib.request.urlopen(link, timeout=60) as response, open(partial, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except (OSError, ValueError) as exc:
            partial.unlink(missing_ok=True)
            raise DataError(f"cannot fetch {link}: {exc}") from None
        got = md5_of(partial)
        if got != expected:
            partial.unlink()
            raise DataError(f"{link}: MD5 {got} does not match the expected {expected}; "
                            f"nothing was unpacked")
        os.replace(partial, file)
        out(f"verified MD5 {got}; unpacking into {target}")
        _safe_extract(file, target)
        fetched.append(file)
    return fetched
