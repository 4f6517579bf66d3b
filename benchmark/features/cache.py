"""Frozen-regime features: computed once per (images, backbone, transform), cached on disk.

The cache entry is a folder ``<dataset name>-<key>`` directly inside the cache folder (the
name made one safe path component, ``registry.names.safe_file_name``), the key a hash of the
dataset fingerprint (image bytes, labels, split), the backbone and its weights, and the
transform. It holds one fp16 ``.npy`` per output (``pooled``, ``s8``, ``s16``, ``s32``)
covering every image of the dataset: only the outputs asked for are computed (a grid of
pooled-feature methods caches ``pooled.npy`` alone) and a later grid that needs more adds
the missing files to the same folder (caches written before this holds every output and
stay valid: same key, same files). A new entry is written to a temporary folder and
renamed; an added output is written under a temporary name and renamed; so an interrupted
extraction leaves nothing half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from registry.names import safe_file_name

from ..data import ImageSet
from ..errors import DataError
from .backbones import build_backbone
from .transforms import Transform

CACHE_FORMAT = 1
OUTPUTS = ("pooled", "s8", "s16", "s32")  # what a backbone gives (registry BACKBONES)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCHMARK_CACHE_DIR", Path.home() / ".cache" / "fghashbench"))


@dataclass
class Features:
    """Arrays indexed like the dataset's images (memory-mapped fp16)."""
    arrays: dict[str, np.ndarray]
    path: Path
    #: (image index, message) of unreadable images skipped (zero features) under
    #: ``on_bad_image="skip"``; the runner leaves them out of every split
    bad: list = field(default_factory=list)

    def select(self, names, index) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.asarray(self.arrays[n][index], dtype=np.float32))
                for n in names}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def cache_key(dataset: ImageSet, backbone: str, weights_id: str, transform: Transform) -> str:
    spec = {"format": CACHE_FORMAT, "dataset": dataset.fingerprint(), "backbone": backbone,
            "weights": weights_id, "transform": vars(transform)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def open_features(path: Path, on_bad_image: str = "fail") -> Features:
    """The cache entry at ``path`` (memory-mapped); with ``on_bad_image="fail"`` a
    ``DataError`` when extraction skipped unreadable images."""
    names = sorted(p.stem for p in path.glob("*.npy"))
    bad = [tuple(b) for b in json.loads((path / "done").read_text()).get("bad", [])]
    if bad and on_bad_image == "fail":
        raise DataError(f"{bad[0][1]} (and {len(bad) - 1} more); --on-bad-image skip leaves "
                        f"unreadable images out" if len(bad) > 1 else
                        f"{bad[0][1]}; --on-bad-image skip leaves unreadable images out")
    return Features({n: np.load(path / f"{n}.npy", mmap_mode="r") for n in names}, path, bad)


def missing_outputs(folder: Path, outputs=None) -> set[str] | None:
    """The outputs to compute for ``folder``: none (an empty set) when every one asked for
    is cached; None (all the backbone gives) when there is no entry and all are asked."""
    if not (folder / "done").is_file():
        return None if outputs is None else set(outputs)
    return set(outputs or OUTPUTS) - {p.stem for p in folder.glob("*.npy")}


def extract_features(dataset: ImageSet, backbone: str = "efficientnet_lite0",
                     transform: Transform = Transform(), cache_dir: Path | None = None,
                     batch_size: int = 32, progress: bool = True,
                     on_bad_image: str = "fail", weights: str | None = None,
                     outputs=None) -> Features:
    """Return cached features holding ``outputs`` (default: every output), computing (and
    caching) the missing ones on first use.

    An unreadable image raises ``DataError`` naming its path (``on_bad_image="fail"``) or,
    with ``"skip"``, gets zero features and is listed in ``Features.bad``."""
    model = build_backbone(backbone, **({"weights": weights} if weights else {}))
    model.eval()
    key = cache_key(dataset, backbone, model.weights_id, transform)
    folder = Path(cache_dir or default_cache_dir()) / safe_file_name(f"{dataset.name}-{key}")
    todo = missing_outputs(folder, outputs)
    if todo is not None and not todo:
        return open_features(folder, on_bad_image)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        bad = _compute(dataset, model, transform, tmp, todo, batch_size, progress, on_bad_image)
        if (folder / "done").is_file():  # add the new outputs to the existing entry
            for path in sorted(tmp.glob("*.npy")):
                os.replace(path, folder / path.name)
        else:
            (tmp / "done").write_text(json.dumps({"images": len(dataset), "dataset": dataset.name,
                                                  "bad": bad}))
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_features(folder, on_bad_image)


def _compute(dataset: ImageSet, model, transform: Transform, tmp: Path, keep: set | None,
             batch_size: int, progress: bool, on_bad_image: str) -> list[tuple[int, str]]:
    """Write the backbone outputs named in ``keep`` (None: all) of every image into
    ``tmp/<name>.npy``; return the unreadable images skipped. Long because the pipeline
    (next batch decoded on a thread while the backbone runs, memory-mapped writers flushed
    at the end) is one unit."""
    model = model.to(memory_format=torch.channels_last)
    n = len(dataset)
    writers: dict[str, np.ndarray] = {}
    bad: list[tuple[int, str]] = []
    blank = Image.new("RGB", (transform.input_size, transform.input_size))

    def load(i):
        try:
            return dataset.load(i)
        except DataError as exc:
            if on_bad_image != "skip":
                raise
            bad.append((i, str(exc)))
            return blank

    def load_batch(start):
        idx = range(start, min(n, start + batch_size))
        return start, torch.stack([transform(load(i), model.mean, model.std) for i in idx])

    starts = list(range(0, n, batch_size))
    bar = tqdm(total=n, desc=f"features {dataset.name}@{transform.input_size}", unit="img",
               disable=not progress, leave=False)
    with bar, ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        pending = pool.submit(load_batch, starts[0])
        for next_start in starts[1:] + [None]:
            start, images = pending.result()
            if next_start is not None:
                pending = pool.submit(load_batch, next_start)
            outputs = model(images.contiguous(memory_format=torch.channels_last))
            for name, value in outputs.items():
                if keep is not None and name not in keep:
                    continue
                if name not in writers:
                    writers[name] = np.lib.format.open_memmap(
                        tmp / f"{name}.npy", mode="w+", dtype=np.float16,
                        shape=(n,) + tuple(value.shape[1:]))
                value = value.float()
                for i, _ in bad:
                    if start <= i < start + len(images):
                        value[i - start] = 0
                writers[name][start:start + len(images)] = value.numpy()
            bar.update(len(images))
    for array in writers.values():
        array.flush()
    return bad
