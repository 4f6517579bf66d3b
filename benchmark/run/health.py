"""A run's training-health block: did it learn, and are its codes usable?

Fields (``None`` where not measured):

* ``loss_first``, ``loss_last``, ``loss_min``: the mean training loss of the first and last
  epoch and the lowest epoch mean after the first (trainable methods);
* ``loss_drop``: ``(loss_first - loss_min) / |loss_first|``;
* ``constant_bits``: fraction of bits with the same value in every database code;
* ``bit_balance``: mean over bits of ``1 - |2 p_k - 1|``, ``p_k`` the fraction of database
  codes with bit k set (1: every bit splits the database in half; 0: every bit constant);
* ``distinct_codes``: number of different codes in the database;
* ``degenerate`` and ``reasons``: the run is flagged when

  - ``loss_never_fell``: trained for at least 2 epochs and ``loss_drop < MIN_LOSS_DROP``
    (2%; the committed records of every method that learns drop by 4% or more, a DPSH run
    that stayed at ln 2 + eta dropped by 1.1% at most);
  - ``codes_collapsed``: ``distinct_codes < COLLAPSE_FRACTION * min(classes, 2^bits)``
    (half as many codes as the database has classes, or as the bits can tell apart), or
    ``constant_bits > MAX_CONSTANT_BITS`` (more than half of the bits never change).

Tables mark a degenerate run instead of ranking it silently.
"""
from __future__ import annotations

import numpy as np

MIN_LOSS_DROP = 0.02
COLLAPSE_FRACTION = 0.5
MAX_CONSTANT_BITS = 0.5


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def loss_health(history: list) -> dict:
    """The loss part of the block from per-epoch mean losses (``None``: non-finite)."""
    values = [v for v in history or [] if v is not None]
    if not values:
        return {"loss_first": None, "loss_last": None, "loss_min": None, "loss_drop": None}
    first, rest = values[0], values[1:]
    lowest = min(rest) if rest else None
    drop = None if lowest is None or first == 0 else (first - lowest) / abs(first)
    return {"loss_first": _rounded(first), "loss_last": _rounded(values[-1]),
            "loss_min": _rounded(lowest), "loss_drop": _rounded(drop)}


def code_health(db_codes: np.ndarray) -> dict:
    """The code part of the block from the database's 0/1 codes ``(N, bits)``."""
    codes = np.asarray(db_codes, dtype=np.uint8)
    share = codes.mean(axis=0) if len(codes) else np.zeros(codes.shape[1])
    return {"constant_bits": _rounded(((share == 0) | (share == 1)).mean()),
            "bit_balance": _rounded((1 - np.abs(2 * share - 1)).mean()),
            "distinct_codes": int(len(np.unique(codes, axis=0)))}


def reasons_of(block: dict, bits: int, classes: int | None) -> list[str]:
    """Why a run is degenerate (empty: healthy, or nothing measured)."""
    reasons = []
    if block.get("loss_drop") is not None and block["loss_drop"] < MIN_LOSS_DROP:
        reasons.append("loss_never_fell")
    distinct = block.get("distinct_codes")
    if distinct is not None:
        separable = min(classes or 2 ** bits, 2 ** bits)
        if distinct < COLLAPSE_FRACTION * separable or block["constant_bits"] > MAX_CONSTANT_BITS:
            reasons.append("codes_collapsed")
    return reasons


def health(history: list, db_codes: np.ndarray | None, db_labels: np.ndarray | None,
           bits: int) -> dict:
    """The health block of one run (see the module docstring); ``db_codes=None`` when the
    codes are not at hand (then only the loss is judged)."""
    block = loss_health(history)
    if db_codes is not None:
        block.update(code_health(db_codes))
    else:
        block.update(constant_bits=None, bit_balance=None, distinct_codes=None)
    classes = None if db_labels is None else int(len(np.unique(db_labels)))
    block["reasons"] = reasons_of(block, bits, classes)
    block["degenerate"] = bool(block["reasons"])
    return block
