"""``python -m benchmark data info|download``: inspect a dataset folder, fetch an archive."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np

from registry.names import safe_file_name

from .images import build_dataset, resolve_data_root
from .official import FOLDERS
from ..errors import BenchmarkError, DataError


class Archive(NamedTuple):
    """A file to fetch and the checksums it must have (hex; ``None``: not checked)."""
    url: str
    md5: str | None = None
    sha256: str | None = None


# name -> the files to fetch; archives unpack into the data root (FOLDERS[name]). SHA-256
# sums as tensorflow/datasets lists them (url_checksums/, with the same byte sizes), MD5 as
# torchvision and earlier releases of this file list them; both are checked.
OFFICIAL_ARCHIVES = {
    "cub200": [Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                       "97eceeb196236b17998738112f37df78",
                       "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081")],
    "aircraft": [Archive("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
                         "fgvc-aircraft-2013b.tar.gz", "d4acdd33327262359767eeaa97a4f732",
                         "d5f68b1b81d6d7831eb9d5c5517074176b5dfbce6bcb43dc14ed1c66a87b8d75")],
    "flowers102": [Archive("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                           "52808999861908f626f3c1f4e79d11fa",
                           "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246"),
                   Archive("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                           "e0620be6f572b9609742df49c70aed4d",
                           "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d"),
                   Archive("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
                           "a5357ecc9cb78c4bef273ce3793fc85c",
                           "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd")],
    "food101": [Archive("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                        "85eeb15f3717b99a5da872d97d918f87",
                        "d97d15e438b7f4498f96086a4f7e2fa42a32f2712e87d3295441b2b6314053a4")],
}
HEX_LENGTH = {"md5": 32, "sha256": 64}
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


def _copy(url: str, f) -> dict[str, str]:
    """Stream ``url`` into the open file ``f``; return its MD5 and SHA-256 (hex). A
    connection that ends before the announced ``Content-Length`` is an error."""
    digests = {kind: hashlib.new(kind) for kind in HEX_LENGTH}
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            announced = response.headers.get("Content-Length")
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                size += len(block)
                for digest in digests.values():
                    digest.update(block)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DataError(f"cannot fetch {url}: {type(exc).__name__}: {exc}; nothing was kept") from None
    if announced is not None and size != int(announced):
        raise DataError(f"cannot fetch {url}: the transfer ended after {size} of {announced} "
                        f"bytes; nothing was kept")
    return {kind: digest.hexdigest() for kind, digest in digests.items()}


def _fetch_verified(archive: Archive, file: Path) -> list[str]:
    """Download ``archive`` into a hidden temporary file beside ``file`` and rename it to
    ``file`` only when every given checksum matches; return the checks passed. On any error,
    mismatch or interruption (Ctrl-C too) the temporary file is removed: nothing that looks
    complete is left."""
    handle, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as f:
            got = _copy(archive.url, f)
        checked = []
        for kind in HEX_LENGTH:
            expected = getattr(archive, kind)
            if expected and got[kind] != expected.lower():
                raise DataError(f"{archive.url}: {kind.upper()} {got[kind]} does not match the "
                                f"expected {expected}; nothing was kept or unpacked")
            checked += [f"{kind.upper()} {got[kind]}"] if expected else []
        os.replace(tmp, file)
        return checked
    finally:
        Path(tmp).unlink(missing_ok=True)


def _archives(name: str, url: str | None, md5: str | None, sha256: str | None) -> list[Archive]:
    """The files ``download`` fetches: the official ones, or ``url`` with its checksums."""
    if not url:
        if md5 or sha256:
            raise BenchmarkError("--md5 and --sha256 go with --url (the official archives "
                                 "carry their own checksums)")
        if name in NO_ARCHIVE:
            raise BenchmarkError(f"{name}: no official archive to download ({NO_ARCHIVE[name]})")
        if name not in OFFICIAL_ARCHIVES:
            raise BenchmarkError(f"unknown dataset {name!r}; downloadable: {', '.join(OFFICIAL_ARCHIVES)}")
        return OFFICIAL_ARCHIVES[name]
    if not (md5 or sha256):
        raise BenchmarkError("--url needs --sha256 (or --md5): the checksum the archive must have")
    for kind, value in (("md5", md5), ("sha256", sha256)):
        if value and not re.fullmatch(f"[0-9a-fA-F]{{{HEX_LENGTH[kind]}}}", value):
            raise BenchmarkError(f"--{kind} must be {HEX_LENGTH[kind]} hex digits, got {value!r}")
    return [Archive(url, md5, sha256)]


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


def _make_data_root(data_root):
    """``download`` creates a missing data root (``--data-root`` or ``$BENCHMARK_DATA_ROOT``)."""
    root = data_root or os.environ.get("BENCHMARK_DATA_ROOT")
    if root:
        try:
            Path(root).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the data root {root}: {exc.strerror or exc}") from None
    return data_root


def download(name: str, data_root=None, url: str | None = None, md5: str | None = None,
             sha256: str | None = None, out=print) -> list[Path]:
    """Fetch the official archive(s) of ``name`` (or ``url`` with its ``sha256`` and/or
    ``md5``), verify every checksum, unpack into the data root; return the files fetched."""
    archives = _archives(name, url, md5, sha256)
    root = resolve_data_root(_make_data_root(data_root))
    target = root / FOLDERS[name] if name == "flowers102" else root
    target.mkdir(parents=True, exist_ok=True)
    fetched = []
    for archive in archives:
        file = target / safe_file_name(Path(urlparse(archive.url).path).name or f"{name}.download")
        out(f"fetching {archive.url}")
        checked = _fetch_verified(archive, file)
        out(f"verified {', '.join(checked)}; unpacking into {target}")
        _safe_extract(file, target)
        fetched.append(file)
    return fetched
