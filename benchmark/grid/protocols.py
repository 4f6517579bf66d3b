"""Protocols owned by the harness: label noise, long tail, validation split, resolution.

Every method of a grid sees the *same* materialised protocol: the harness draws it once
per (dataset, protocol, seed), from generators seeded by the run seed, and hands the
method only the result (training inputs and the labels after noise). Each materialised
protocol gets a content hash that is stored in the run's record.

Order of application to the official train split (queries are never touched):

1. ``val_frac = F``: per class, ``round(F * n_c)`` training images (at least 1, at most
   ``n_c - 1``) move to a validation split used for model selection (never the test set).
2. ``long_tail = "exp:RHO"``: classes are put in a seeded random order; the class at rank
   ``c`` of ``C`` keeps ``round(n_max * RHO ** (-c / (C - 1)))`` training images (at least 1,
   at most what it has), ``n_max`` = the largest class count (DESIGN.md, "Long tail").
   The database is this subsampled train split; queries stay balanced.
3. ``noise = "symmetric:R"`` / ``"pairflip:R"``: per class, ``round(R * n_c)`` training
   labels are replaced by a uniformly random *other* class (symmetric) or by the next class
   ``(c + 1) mod C`` (pair flip); the validation split gets the same, counted over its own
   ``n_c``. Evaluation uses clean labels.

``resolution = S`` / ``resolution_db = S``: queries / database images are centre-cropped,
shrunk by the factor S and resized back before the backbone (``features.Transform``).

``unseen_classes = F`` (:mod:`.unseen`) comes first: a seeded share of the classes leaves the
train split (steps 1-3 act on the seen classes; noise flips only to seen classes), and
``unseen_eval`` restricts queries and database to one of four settings.

With a validation split the reported run is retrained on the full training split (train and
validation, ``val_rule = "retrain"``, :meth:`Split.full_training`), so the database is the
full training split: ``train_index`` is what selection trains on, ``db_index`` the database
of the reported run.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import BenchmarkError
from .unseen import check_setting, choose_unseen, restrict

NOISE_KINDS = ("symmetric", "pairflip")
#: how a run with a validation split is reported (README "Protocols")
VAL_RULES = ("retrain",)
# Independent seeded streams per step, so one step's draws never shift another's.
_STREAM = {"val": 1, "long_tail": 2, "noise": 3, "unseen": 4}


# ---------------------------------------------------------------- parsing

def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BenchmarkError(f"{what}: {text!r} is not a number") from None


def parse_noise(text: str | None) -> tuple[str, float] | None:
    """``"symmetric:0.5"`` -> ``("symmetric", 0.5)``; rate 0 (and None) -> None (clean)."""
    if text is None or text in ("", "none", "clean"):
        return None
    kind, sep, value = text.partition(":")
    if not sep or kind not in NOISE_KINDS:
        raise BenchmarkError(f"--noise {text!r}: expected symmetric:R or pairflip:R with R in [0, 1)")
    rate = _number(value, f"--noise {text!r}")
    if not 0 <= rate < 1:
        raise BenchmarkError(f"--noise {text!r}: the rate must be in [0, 1)")
    return None if rate == 0 else (kind, rate)


def parse_long_tail(text: str | None) -> float | None:
    """``"exp:10"`` -> 10.0; ratio 1 (and None) -> None (balanced)."""
    if text is None or text in ("", "none"):
        return None
    kind, sep, value = text.partition(":")
    if kind != "exp" or not sep:
        raise BenchmarkError(f"--long-tail {text!r}: expected exp:RHO (RHO >= 1, largest/smallest class)")
    rho = _number(value, f"--long-tail {text!r}")
    if rho < 1:
        raise BenchmarkError(f"--long-tail {text!r}: RHO must be >= 1")
    return None if rho == 1 else rho


def _canonical_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def expand_grid(text: str | None, flag: str) -> list[str | None]:
    """``"symmetric:0,0.2,0.5"`` -> ``["symmetric:0", "symmetric:0.2", "symmetric:0.5"]``;
    a bare value inherits the previous prefix; ``"symmetric:0.2,pairflip:0.4"`` mixes kinds."""
    if text is None:
        return [None]
    out, prefix = [], None
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if ":" in part:
            prefix = part.split(":", 1)[0]
        elif prefix is not None:
            part = f"{prefix}:{part}"
        elif part not in ("none", "clean"):
            raise BenchmarkError(f"{flag} {text!r}: the first value needs a kind, e.g. symmetric:0.2")
        out.append(part)
    if not out:
        raise BenchmarkError(f"{flag} {text!r}: no value given")
    return out


@dataclass(frozen=True)
class Protocol:
    """One protocol setting; ``spec()`` is what goes into the run identity and leaderboard."""
    noise: str | None = None
    long_tail: str | None = None
    resolution: float = 1
    resolution_db: float = 1
    val_frac: float = 0.0
    val_rule: str = "retrain"
    unseen_classes: float = 0.0
    unseen_eval: str | None = None
    #: content hash of a split file the protocol was read from (``grid.splitfile``)
    split_file: str | None = None

    def __post_init__(self):
        for name in ("resolution", "resolution_db"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be >= 1 (a downsampling "
                                     f"factor), got {getattr(self, name)}")
        if not 0 <= self.val_frac < 1:
            raise BenchmarkError(f"--val-frac must be in [0, 1), got {self.val_frac}")
        if self.val_rule not in VAL_RULES:
            raise BenchmarkError(f"val_rule {self.val_rule!r}: expected one of {', '.join(VAL_RULES)}")
        check_setting(self.unseen_classes, self.unseen_eval)

    @property
    def noise_kind_rate(self):
        return parse_noise(self.noise)

    @property
    def rho(self):
        return parse_long_tail(self.long_tail)

    def spec(self) -> dict:
        noise, rho = self.noise_kind_rate, self.rho
        return {"noise": f"{noise[0]}:{_canonical_number(noise[1])}" if noise else None,
                "long_tail": f"exp:{_canonical_number(rho)}" if rho else None,
                "resolution": _canonical_number(self.resolution),
                "resolution_db": _canonical_number(self.resolution_db),
                "val_frac": _canonical_number(self.val_frac),
                # keys below appear only when switched on, so earlier run ids stay as they were
                **({"val_rule": self.val_rule} if self.val_frac > 0 else {}),
                **({"unseen_classes": _canonical_number(self.unseen_classes),
                    "unseen_eval": self.unseen_eval} if self.unseen_classes > 0 else {}),
                **({"split_file": self.split_file} if self.split_file else {})}


def protocol_label(protocol: dict) -> str:
    """The switched-on fields of a protocol spec (those differing from the clean protocol),
    e.g. "noise=symmetric:0.5"; "clean" when none is."""
    clean = Protocol().spec()
    parts = [f"{k}={v}" for k, v in sorted(protocol.items())
             if k != "materialised" and v != clean.get(k)]
    return ", ".join(parts) or "clean"


# ---------------------------------------------------------------- materialisation

def _rng(seed: int, step: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[step]])


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def carve_validation(train_index: np.ndarray, labels: np.ndarray, frac: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, move ``round(frac * n_c)`` (clipped to 1..n_c-1) images to validation."""
    keep, val = [], []
    for c in np.unique(labels[train_index]):
        members = train_index[labels[train_index] == c]
        n_val = min(max(1, round(frac * len(members))), len(members) - 1)
        chosen = rng.permutation(len(members))
        val.append(members[chosen[:n_val]])
        keep.append(members[chosen[n_val:]])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(val))


def long_tail_counts(class_counts: np.ndarray, rho: float, order: np.ndarray) -> np.ndarray:
    """Target per-class counts: rank r (in ``order``) keeps n_max * rho^(-r/(C-1))."""
    c = len(class_counts)
    n_max = int(class_counts.max())
    target = np.empty(c, dtype=np.int64)
    for rank, cls in enumerate(order):
        exponent = rank / (c - 1) if c > 1 else 0.0
        target[cls] = max(1, round(n_max * rho ** (-exponent)))
    return np.minimum(target, class_counts)


def subsample_long_tail(train_index: np.ndarray, labels: np.ndarray, rho: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    classes = np.unique(labels[train_index])
    counts = np.array([(labels[train_index] == c).sum() for c in classes])
    order = rng.permutation(len(classes))
    kept_counts = long_tail_counts(counts, rho, order)
    kept = []
    for cls, n_keep in zip(classes, kept_counts):
        members = train_index[labels[train_index] == cls]
        kept.append(np.sort(rng.permutation(members)[:n_keep]))
    index = np.sort(np.concatenate(kept))
    summary = {"rho": rho, "classes": len(classes), "images": int(kept_counts.sum()),
               "images_before": int(counts.sum()), "max": int(kept_counts.max()),
               "min": int(kept_counts.min()), "median": float(np.median(kept_counts)),
               "realised_ratio": round(float(kept_counts.max() / kept_counts.min()), 4),
               "class_order": _digest(classes[order]), "hash": _digest(index)}
    return index, summary


def corrupt_labels(labels: np.ndarray, kind: str, rate: float, num_classes: int,
                   rng: np.random.Generator, classes: np.ndarray | None = None) -> np.ndarray:
    """Flip ``round(rate * n_c)`` labels of each class c (see module docstring) to another of
    ``classes`` (sorted; default all ``num_classes``, which draws exactly as without it)."""
    noisy = labels.copy()
    targets = np.arange(num_classes) if classes is None else np.asarray(classes)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        flip = rng.permutation(members)[:round(rate * len(members))]
        slot = int(np.searchsorted(targets, c))
        if kind == "pairflip":
            noisy[flip] = targets[(slot + 1) % len(targets)]
        else:
            other = rng.integers(0, len(targets) - 1, size=len(flip))
            noisy[flip] = targets[other + (other >= slot)]
    return noisy


def _noisy_labels(labels, train_index, val_index, kind, rate, num_classes, rng, classes=None):
    """Train then validation labels after noise, each split corrupted on its own (exactly
    ``round(rate * n_c)`` flips per class in each; one stream, train first, so a run
    without validation draws what it always drew), and the realised rates."""
    train = corrupt_labels(labels[train_index], kind, rate, num_classes, rng, classes)
    val = corrupt_labels(labels[val_index], kind, rate, num_classes, rng, classes)
    facts = {"kind": kind, "rate": rate,
             "realised_rate": round(float((train != labels[train_index]).mean()), 6)}
    if len(val_index):
        facts["realised_rate_val"] = round(float((val != labels[val_index]).mean()), 6)
    return np.concatenate([train, val]), facts


@dataclass
class Split:
    """A materialised protocol: which images play which role, and the labels a method sees."""
    train_index: np.ndarray      # what the method trains on (selection, with a validation split)
    val_index: np.ndarray        # model selection (empty without --val-frac)
    query_index: np.ndarray
    db_index: np.ndarray         # the reported run's database (the full training split unless
    #                              the dataset has a gallery or the unseen protocol adds to it)
    train_labels: np.ndarray     # labels given to the method (after noise)
    val_labels: np.ndarray       # validation labels (after the same noise)
    facts: dict = field(default_factory=dict)

    def full_training(self) -> "Split":
        """The split of the reported run under ``val_rule = "retrain"``: training on train
        and validation images (each with its label after noise), no validation split."""
        index = np.concatenate([self.train_index, self.val_index])
        order = np.argsort(index, kind="stable")
        given = np.concatenate([self.train_labels, self.val_labels])
        return dataclasses.replace(self, train_index=index[order], train_labels=given[order],
                                   val_index=self.val_index[:0], val_labels=self.val_labels[:0])


def _remove_unseen(labels, train_index, protocol: Protocol, seed: int):
    """(seen train images, unseen classes or None, the unseen classes' train images)."""
    if not protocol.unseen_classes:
        return train_index, None, train_index[:0]
    unseen = choose_unseen(labels[train_index], protocol.unseen_classes, _rng(seed, "unseen"))
    hidden = np.isin(labels[train_index], unseen)
    return train_index[~hidden], unseen, train_index[hidden]


def _evaluated(labels, protocol: Protocol, unseen, held_out, training, query_index, db_mask,
               facts: dict) -> tuple[np.ndarray, np.ndarray]:
    """(queries, database): the full training split ``training`` (or the dataset's gallery),
    restricted by the unseen-class setting when there is one (:mod:`.unseen`)."""
    db_index = training if db_mask is None else np.flatnonzero(db_mask)
    if unseen is None:
        return query_index, db_index
    facts["unseen"] = {"fraction": protocol.unseen_classes, "eval": protocol.unseen_eval,
                       "count": len(unseen), "classes": unseen.tolist(), "hash": _digest(unseen)}
    pool = np.union1d(db_index, held_out) if db_mask is None else db_index
    return restrict(protocol.unseen_eval, labels, unseen, query_index, pool)


def materialise(labels: np.ndarray, is_train: np.ndarray, num_classes: int,
                protocol: Protocol, seed: int, query_mask: np.ndarray | None = None,
                db_mask: np.ndarray | None = None) -> Split:
    """Apply the protocol to a dataset's split; deterministic in (labels, split, protocol, seed).

    ``query_mask``/``db_mask`` come from datasets with an explicit query/gallery split
    (re-ID); otherwise query = test split and database = the (protocol's) full train split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    train_index, unseen, held_out = _remove_unseen(labels, np.flatnonzero(is_train), protocol, seed)
    query_index = np.flatnonzero(~is_train if query_mask is None else query_mask)
    val_index = np.empty(0, dtype=np.int64)
    facts: dict = {}
    if protocol.val_frac > 0:
        train_index, val_index = carve_validation(train_index, labels, protocol.val_frac,
                                                  _rng(seed, "val"))
        facts["val"] = {"images": len(val_index), "hash": _digest(val_index)}
    if protocol.rho:
        train_index, facts["long_tail"] = subsample_long_tail(train_index, labels, protocol.rho,
                                                              _rng(seed, "long_tail"))
    seen = np.concatenate([train_index, val_index])
    seen_labels = labels[seen]
    if protocol.noise_kind_rate:
        kind, rate = protocol.noise_kind_rate
        targets = None if unseen is None else np.unique(seen_labels)  # seen classes only
        noisy, facts["noise"] = _noisy_labels(labels, train_index, val_index, kind, rate,
                                              num_classes, _rng(seed, "noise"), targets)
        facts["noise"]["hash"] = _digest(seen, noisy)
    else:
        noisy = seen_labels
    if np.intersect1d(seen, query_index).size:
        raise BenchmarkError("protocol error: query images overlap the training split")
    query_index, db_index = _evaluated(labels, protocol, unseen, held_out,
                                       np.union1d(train_index, val_index), query_index, db_mask,
                                       facts)
    split = Split(train_index=train_index, val_index=val_index, query_index=query_index,
                  db_index=db_index, train_labels=noisy[:len(train_index)],
                  val_labels=noisy[len(train_index):], facts=facts)
    facts["hash"] = _digest(split.train_index, split.train_labels, split.val_index,
                            split.val_labels, split.query_index, split.db_index)
    facts["counts"] = {"train": len(train_index), "val": len(val_index),
                       "query": len(query_index), "database": len(db_index)}
    if len(val_index):  # val_rule "retrain": the reported run trains on both
        facts["counts"]["retrain"] = len(train_index) + len(val_index)
    return split
