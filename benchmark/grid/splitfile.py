"""Split files: a materialised protocol written out, and runs of exactly that protocol.

``python -m benchmark protocol export --dataset D --seed S [protocol flags] --out FILE``
writes one JSON object: ``format``/``version``, the dataset (name, fingerprint, image and
class counts), the seed, the protocol setting (``Protocol.spec()``), the split as image
indices into the dataset (its order is pinned by the fingerprint): ``train`` (what the
method trains on), ``val``, ``query``, ``database``, the labels the method is given
(``train_labels``, ``val_labels``, after noise), the materialised facts (long-tail
summary, realised noise, unseen classes, counts) and the content hash of the split.

``run --protocol-file FILE`` runs exactly that split: the protocol is the file's (plus
``split_file`` = its content hash, so such runs are their own protocol rows), the seed is
the file's, and a file made for other data (its dataset fingerprint differs) is refused
with one line before any run. The content hash is recomputed from the arrays; a file
whose stated hash differs (edited by hand) is refused, a file without one is accepted.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import BenchmarkError
from .protocols import Protocol, Split, _digest, materialise
from .unseen import SETTINGS

FORMAT, VERSION = "fghashbench-split", 1
ROLES = ("train", "train_labels", "val", "val_labels", "query", "database")


def content_hash(arrays: dict) -> str:
    """The split's content hash (the one ``materialise`` records as ``facts["hash"]``)."""
    return _digest(*(arrays[k] for k in ("train", "train_labels", "val", "val_labels", "query",
                                         "database")))


def payload_of(dataset, protocol: Protocol, seed: int, split: Split) -> dict:
    """The file's content for ``split`` (``materialise(..., protocol, seed)`` of ``dataset``)."""
    arrays = {"train": split.train_index, "train_labels": split.train_labels,
              "val": split.val_index, "val_labels": split.val_labels,
              "query": split.query_index, "database": split.db_index}
    return {"format": FORMAT, "version": VERSION,
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(),
                        "images": len(dataset), "classes": dataset.num_classes},
            "seed": seed, "protocol": protocol.spec(),
            "split": {k: np.asarray(v, dtype=np.int64).tolist() for k, v in arrays.items()},
            "facts": split.facts, "hash": split.facts["hash"]}


def _int_array(path, payload: dict, role: str) -> np.ndarray:
    values = payload["split"].get(role)
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise BenchmarkError(f"--protocol-file {path}: split.{role} must be a list of integers")
    return np.asarray(values, dtype=np.int64).reshape(-1)


@lru_cache(maxsize=8)
def read(path: str) -> dict:
    """The checked content of split file ``path`` (arrays as numpy, ``hash`` recomputed)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"--protocol-file {path}: cannot read it ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT \
            or payload.get("version") != VERSION or not isinstance(payload.get("split"), dict):
        raise BenchmarkError(f"--protocol-file {path}: not a {FORMAT} version {VERSION} file")
    if not isinstance(payload.get("dataset"), dict) or type(payload.get("seed")) is not int:
        raise BenchmarkError(f"--protocol-file {path}: needs a dataset object and an integer seed")
    arrays = {role: _int_array(path, payload, role) for role in ROLES}
    for role in ("train", "val"):
        if len(arrays[role]) != len(arrays[f"{role}_labels"]):
            raise BenchmarkError(f"--protocol-file {path}: split.{role} and split.{role}_labels "
                                 f"differ in length")
    if not len(arrays["train"]) or not len(arrays["query"]) or not len(arrays["database"]):
        raise BenchmarkError(f"--protocol-file {path}: train, query and database must not be empty")
    if np.intersect1d(np.concatenate([arrays["train"], arrays["val"]]), arrays["query"]).size:
        raise BenchmarkError(f"--protocol-file {path}: query images overlap the training split")
    computed = content_hash(arrays)
    if payload.get("hash") not in (None, computed):
        raise BenchmarkError(f"--protocol-file {path}: its content hash {payload['hash']} does not "
                             f"match its split ({computed}); was it edited?")
    return {**payload, "arrays": arrays, "hash": computed}


def protocol_of(path: str) -> Protocol:
    """The file's protocol, marked with its content hash (``split_file``)."""
    payload = read(path)
    given = {k: v for k, v in (payload.get("protocol") or {}).items() if k != "split_file"}
    try:
        return Protocol(**given, split_file=payload["hash"])
    except TypeError as exc:
        raise BenchmarkError(f"--protocol-file {path}: bad protocol ({exc})") from None


def check_dataset(path: str, dataset) -> None:
    """One line when the file was made for other data, or indexes images it does not have."""
    stated = read(path)["dataset"]
    if stated.get("fingerprint") != dataset.fingerprint():
        raise BenchmarkError(f"--protocol-file {path}: made for dataset {stated.get('name')!r} "
                             f"(fingerprint {stated.get('fingerprint')}), not this "
                             f"{dataset.name!r} (fingerprint {dataset.fingerprint()})")
    arrays = read(path)["arrays"]
    labels = np.concatenate([arrays["train_labels"], arrays["val_labels"]])
    outside = [int(arrays[r].min(initial=0)) < 0 or int(arrays[r].max(initial=-1)) >= len(dataset)
               for r in ("train", "val", "query", "database")]
    if any(outside) or int(labels.min(initial=0)) < 0 or int(labels.max(initial=0)) >= dataset.num_classes:
        raise BenchmarkError(f"--protocol-file {path}: an index or label outside the dataset "
                             f"({len(dataset)} images, {dataset.num_classes} classes)")


def split_of(path: str) -> Split:
    """The file's split, as ``materialise`` would have given it."""
    payload = read(path)
    a = payload["arrays"]
    facts = {**(payload.get("facts") or {}), "hash": payload["hash"],
             "counts": {"train": len(a["train"]), "val": len(a["val"]), "query": len(a["query"]),
                        "database": len(a["database"])}, "split_file": str(Path(path).name)}
    return Split(train_index=a["train"], val_index=a["val"], query_index=a["query"],
                 db_index=a["database"], train_labels=a["train_labels"], val_labels=a["val_labels"],
                 facts=facts)


# ---------------------------------------------------------------- protocol export

def add_parser(sub) -> None:
    """``protocol export``: write a materialised protocol to a split file."""
    protocol = sub.add_parser("protocol", help="export a materialised protocol as a split file")
    protocol.add_argument("action", choices=["export"])
    protocol.add_argument("--dataset", default="cub100")
    protocol.add_argument("--data-root", default=None)
    protocol.add_argument("--max-classes", type=int, default=None)
    protocol.add_argument("--seed", type=int, default=0)
    protocol.add_argument("--noise", default=None, metavar="KIND:R")
    protocol.add_argument("--long-tail", default=None, metavar="exp:RHO")
    protocol.add_argument("--val-frac", type=float, default=0.0)
    protocol.add_argument("--resolution", type=float, default=1, metavar="S")
    protocol.add_argument("--resolution-db", type=float, default=1, metavar="S")
    protocol.add_argument("--unseen-classes", type=float, default=0.0, metavar="F")
    protocol.add_argument("--unseen-eval", default=None, choices=SETTINGS,
                          help="the one unseen-class setting the file holds")
    protocol.add_argument("--out", required=True, help="the JSON file to write")


def command(args) -> int:
    from ..data import build_grid_dataset
    chosen = Protocol(noise=args.noise, long_tail=args.long_tail, val_frac=args.val_frac,
                      unseen_classes=args.unseen_classes, unseen_eval=args.unseen_eval,
                      resolution=args.resolution, resolution_db=args.resolution_db)
    chosen.spec()  # parses noise and long tail: one line for a bad value
    dataset = build_grid_dataset(args.dataset, args.data_root, args.max_classes)
    query = ~dataset.is_train if dataset.query_mask is None else dataset.query_mask
    split = materialise(dataset.labels, dataset.is_train, dataset.num_classes, chosen, args.seed,
                        query_mask=query, db_mask=dataset.db_mask)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload_of(dataset, chosen, args.seed, split), sort_keys=True) + "\n")
    print(f"wrote {out}: {dataset.name} seed {args.seed}, {split.facts['counts']}, "
          f"hash {split.facts['hash']}")
    return 0
