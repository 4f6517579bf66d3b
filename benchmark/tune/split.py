"""The data a tune sees: the train split only, re-split into validation queries and a
database, registered as a dataset so that trials are ordinary runs.

Per class, ``round(F * n_c)`` training images (at least 1, at most ``n_c - 1``) become the
tuning queries, the rest of the train split the database and the training set; the draw is
the one ``--val-frac F`` makes for the same seed (``protocols.carve_validation``, stream 1).
The test split is not part of this dataset: no test image is decoded, no feature of one
is computed and no test label reaches a method or a metric (building the full dataset
first still hashes every image file's bytes for its identity, as every command does).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from registry import DATASETS

from ..data import build_grid_dataset
from ..data.images import ImageSet
from ..grid.protocols import carve_validation

#: the stream ``protocols.materialise`` draws the validation split from
VAL_STREAM = 1


def tuning_name(dataset: str, val_frac: float, seed: int) -> str:
    return f"{dataset}.tune-val{val_frac:g}-seed{seed}"


def tuning_set(dataset: ImageSet, val_frac: float, seed: int) -> ImageSet:
    """``dataset``'s train split with its validation part marked as the query ("test") side."""
    train = dataset.subset(dataset.is_train, "")
    positions = np.arange(len(train))
    _, val = carve_validation(positions, train.labels, val_frac,
                              np.random.default_rng([seed, VAL_STREAM]))
    is_query = np.zeros(len(train), dtype=bool)
    is_query[val] = True
    return dataclasses.replace(train, name=tuning_name(dataset.name, val_frac, seed),
                               is_train=~is_query, query_mask=None, db_mask=None,
                               identity=f"{train.identity}|tune:val_frac={val_frac:g},seed={seed}")


def register_tuning_set(name: str, data_root, val_frac: float, seed: int,
                        max_classes: int | None = None) -> tuple[str, ImageSet]:
    """Build the tuning set of dataset ``name`` and register it under its tuning name (the
    builder returns the same object, so trials share it)."""
    dataset = build_grid_dataset(name, data_root, max_classes)
    tuned = tuning_set(dataset, val_frac, seed)

    def builder(data_root=None, strict=True, **options):
        return tuned
    DATASETS.register_module(name=tuned.name, module=builder, force=True)
    return tuned.name, tuned
