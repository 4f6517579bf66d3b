"""The unseen-class protocol (``--unseen-classes F``): a seeded share of the classes is left
out of training and retrieval is evaluated in four settings.

``round(F * C)`` of the ``C`` classes with training images (at least 1, at most ``C - 1``),
drawn from the run seed, are *unseen*: none of their images is trained on, validated on or
used as a noise target. The database pool is the training split of the seen classes (what
the method trained on) plus every official training image of the unseen classes (never
seen; a dataset with its own gallery keeps it); queries are the test images. Each setting
restricts queries and database by class (``query@database``):

* ``seen@seen``: seen-class queries, seen-class database,
* ``seen@all``: seen-class queries, the whole pool,
* ``unseen@unseen``: unseen-class queries, unseen-class database,
* ``unseen@all``: unseen-class queries, the whole pool.

One setting is one protocol (``unseen_eval`` in the spec), so one record is one evaluated
setting with its own split hash; the four runs of one training train identically.
"""
from __future__ import annotations

import numpy as np

from ..errors import BenchmarkError

SETTINGS = ("seen@seen", "seen@all", "unseen@unseen", "unseen@all")


def check_setting(fraction: float, setting: str | None) -> None:
    """A valid fraction in [0, 1), and a setting exactly when the fraction is above 0."""
    if not 0 <= fraction < 1:
        raise BenchmarkError(f"--unseen-classes must be in [0, 1), got {fraction}")
    if fraction > 0 and setting not in SETTINGS:
        raise BenchmarkError(f"unseen-class setting {setting!r}: expected one of {', '.join(SETTINGS)}")
    if fraction == 0 and setting:
        raise BenchmarkError(f"unseen-class setting {setting!r} needs --unseen-classes above 0")


def choose_unseen(classes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``round(fraction * C)`` of ``classes`` (clipped to 1..C-1), sorted."""
    classes = np.unique(classes)
    if len(classes) < 2:
        raise BenchmarkError("--unseen-classes needs at least 2 classes with training images")
    count = min(max(1, round(fraction * len(classes))), len(classes) - 1)
    return np.sort(rng.permutation(classes)[:count])


def restrict(setting: str, labels: np.ndarray, unseen: np.ndarray, query_index: np.ndarray,
             pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(queries, database) of ``setting``: the queries of its query side's classes, and the
    pool restricted to its database side's classes (``all``: the whole pool)."""
    query_side, db_side = setting.split("@")

    def side(index: np.ndarray, which: str) -> np.ndarray:
        if which == "all":
            return index
        hidden = np.isin(labels[index], unseen)
        return index[hidden if which == "unseen" else ~hidden]
    return side(query_index, query_side), side(pool, db_side)
