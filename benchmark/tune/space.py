"""A method's ``search_space`` (``benchmark.method``) checked and turned into Optuna
suggestions, with the tune's epoch cap applied."""
from __future__ import annotations

from ..errors import BenchmarkError
from ..grid.config import checked_values
from ..method import hparam_defaults

KINDS = ("float", "log", "int", "choice")


def checked_space(cls, name: str) -> dict:
    """``cls.search_space`` after checking every entry: a declared hyperparameter, a known
    kind, bounds (or choices) that are valid values and hold the default."""
    space = dict(cls.search_space)
    if not cls.trainable or not space:
        raise BenchmarkError(f"{name}: nothing to tune ({'closed-form' if not cls.trainable else 'no search_space'})")
    defaults = hparam_defaults(cls)
    for key, entry in space.items():
        kind = entry[0] if isinstance(entry, (tuple, list)) and entry else None
        if key not in defaults or kind not in KINDS:
            raise BenchmarkError(f"{name}.search_space[{key!r}]: expected a declared hyperparameter "
                                 f"and one of {', '.join(KINDS)}, got {entry!r}")
        values = list(entry[1]) if kind == "choice" else [entry[1], entry[2]]
        for value in values:
            checked_values(cls, name, {key: value})
        inside = (defaults[key] in values if kind == "choice"
                  else values[0] <= defaults[key] <= values[1])
        if not inside:
            raise BenchmarkError(f"{name}.search_space[{key!r}] {entry!r} does not hold the "
                                 f"default {defaults[key]!r}")
    return space


def capped(space: dict, defaults: dict, cap: int) -> tuple[dict, dict]:
    """(space, fixed values) under the epoch cap: ``epochs`` searched up to ``cap``, or fixed
    at ``min(default, cap)`` when the method does not search it."""
    space = dict(space)
    if "epochs" in space:
        kind, low, high = space["epochs"]
        space["epochs"] = (kind, min(low, cap), min(high, cap))
        return space, {}
    return space, {"epochs": min(defaults["epochs"], cap)}


def suggest(trial, space: dict) -> dict:
    """One value per searched hyperparameter from an Optuna trial."""
    values = {}
    for key, entry in sorted(space.items()):
        kind = entry[0]
        if kind == "choice":
            values[key] = trial.suggest_categorical(key, list(entry[1]))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(entry[1]), int(entry[2]))
        else:
            values[key] = trial.suggest_float(key, float(entry[1]), float(entry[2]),
                                              log=kind == "log")
    return values
