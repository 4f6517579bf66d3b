"""Method settings from ``--hparams`` and ``--config``, resolved and validated per method.

``--hparams dsh.alpha=0.1,dsh.lr=0.02``: ``METHOD.NAME=VALUE`` pairs (values read as
true/false/none, integers, floats, else text). ``--config FILE``: an mmengine ``Config``
(``.py``, ``.yaml``/``.yml`` or ``.json``) with any of

* ``hparams = {METHOD: {NAME: VALUE}}``: settings per method or variant,
* ``variants = [{"name": N, "base": METHOD, "hparams": {...}}]``: named variants (the same
  mechanism as a built-in ablation variant, ``benchmark.method`` "Variants"), run by name,
* ``selection = {METHOD: {...}}``: how that method's settings were chosen (``tune`` writes
  it: objective, trials, split, seed); it becomes part of every run of that method.

Resolution (:func:`resolve`): declared defaults (``benchmark.method.hparam_defaults``), then
the config's ``hparams``, then ``--hparams``, then ``--epochs`` (every trainable method).
Unknown method or name, a value of the wrong type or out of range: ``BenchmarkError``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import BenchmarkError
from ..method import SCHEDULE, TRAIN_RANGES, hparam_defaults, split_hparams
from ..run.schedule import canonical as canonical_schedule

CONFIG_KEYS = ("hparams", "variants", "selection")


@dataclass
class MethodSettings:
    """What the user set: per-method values, config variants, selection rules, --epochs."""
    hparams: dict[str, dict] = field(default_factory=dict)
    variants: list[dict] = field(default_factory=list)
    selection: dict[str, dict] = field(default_factory=dict)
    epochs: int | None = None
    source: str = ""
    #: the methods ``--hparams`` names (each must be run)
    cli_methods: set = field(default_factory=set)
    #: the mark of a tuning trial (``benchmark.tune``), put into its spec
    tuning: dict | None = None


@dataclass(frozen=True)
class Resolved:
    """A method's resolved settings: constructor keywords, training config, selection."""
    hparams: dict
    train: dict | None
    selection: dict | None = None


def scalar(text: str):
    """``"true"`` -> True, ``"none"`` -> None, ``"3"`` -> 3, ``"1e-3"`` -> 0.001, else text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_hparams(text: str | None) -> dict[str, dict]:
    """``"dsh.alpha=0.1,csq.lr=0.001"`` -> ``{"dsh": {"alpha": 0.1}, "csq": {"lr": 0.001}}``."""
    out: dict[str, dict] = {}
    for pair in (p.strip() for p in (text or "").split(",")):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        method, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not method or not name:
            raise BenchmarkError(f"--hparams {pair!r}: expected METHOD.NAME=VALUE")
        out.setdefault(method, {})[name] = scalar(value)
    return out


def load_config(path: str | Path) -> MethodSettings:
    """Read a ``--config`` file (see the module docstring)."""
    from mmengine.config import Config
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"--config {path}: no such file")
    try:
        data = Config.fromfile(str(path)).to_dict()
    except Exception as exc:  # noqa: BLE001 - mmengine raises many kinds; one line for users
        raise BenchmarkError(f"--config {path}: cannot read it ({' '.join(str(exc).split())})") from None
    unknown = sorted(k for k in data if k not in CONFIG_KEYS and not k.startswith("_"))
    if unknown:
        raise BenchmarkError(f"--config {path}: unknown key(s) {', '.join(unknown)}; "
                             f"expected {', '.join(CONFIG_KEYS)}")
    hparams, variants = data.get("hparams") or {}, data.get("variants") or []
    if not isinstance(hparams, dict) or not all(isinstance(v, dict) for v in hparams.values()):
        raise BenchmarkError(f"--config {path}: hparams must map methods to {{name: value}}")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise BenchmarkError(f"--config {path}: variants must be a list of "
                             f"{{name, base, hparams}} entries")
    for v in variants:
        if set(v) - {"name", "base", "hparams"} or not v.get("name") or not v.get("base"):
            raise BenchmarkError(f"--config {path}: a variant needs exactly name, base and "
                                 f"(optionally) hparams, got {sorted(v)}")
    return MethodSettings(hparams, variants, data.get("selection") or {}, source=str(path))


def settings_of(hparams: str | dict | None, config: str | Path | None,
                epochs: int | None = None, tuning: dict | None = None) -> MethodSettings:
    """The settings of a request: the config file's, then ``--hparams`` over them."""
    settings = load_config(config) if config else MethodSettings()
    given = parse_hparams(hparams) if isinstance(hparams, str) else dict(hparams or {})
    for method, values in given.items():
        settings.hparams[method] = {**settings.hparams.get(method, {}), **values}
    settings.epochs, settings.cli_methods, settings.tuning = epochs, set(given), tuning
    return settings


def _typed(method: str, key: str, value, default):
    """``value`` converted to ``default``'s type, or a one-line error."""
    if isinstance(value, str) and default is not None and not isinstance(default, str):
        value = scalar(value)
    kinds = ((bool, (bool,)), (int, (int,)), (float, (int, float)), (str, (str,)),
             (tuple, (list, tuple)), (list, (list, tuple)))
    for kind, accepted in kinds:
        if isinstance(default, kind):
            if isinstance(value, accepted) and (kind is bool or not isinstance(value, bool)):
                return float(value) if kind is float else value
            raise BenchmarkError(f"{method}.{key}={value!r}: expected {kind.__name__} "
                                 f"(default {default!r})")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise BenchmarkError(f"{method}.{key}={value!r}: expected a number, text, true/false or none")


def _in_range(method: str, key: str, value, ranges: dict) -> None:
    low, high = ranges.get(key, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (low is not None and value < low) or (high is not None and value > high)):
        raise BenchmarkError(f"{method}.{key}={value!r}: out of range "
                             f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]")


def _optimizer_arguments(method: str, kind) -> set[str]:
    """The keyword arguments of ``torch.optim.<kind>`` (an error if it is no optimiser)."""
    optimizer = getattr(torch.optim, kind, None) if isinstance(kind, str) else None
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise BenchmarkError(f"{method}.optimizer={kind!r}: not a torch.optim optimiser")
    return set(inspect.signature(optimizer).parameters) - {"params"}


def checked_values(cls, name: str, given: dict) -> dict:
    """``cls``'s defaults with ``given`` over them, each value type- and range-checked.
    With an optimiser other than the default, default arguments it does not take are
    dropped (one set explicitly is an error)."""
    defaults = hparam_defaults(cls)
    ranges = {**TRAIN_RANGES, **cls.hparam_ranges}
    accepted: set[str] = set()
    if cls.trainable:  # every trainable method takes a schedule (benchmark.run.schedule)
        accepted = _optimizer_arguments(name, given.get("optimizer", defaults["optimizer"])) | {SCHEDULE}
    values = dict(defaults)
    for key, value in given.items():
        if key not in defaults and key not in accepted:
            raise BenchmarkError(f"{name}: unknown hyperparameter {key!r}; known: "
                                 f"{', '.join(sorted(defaults)) or '(none)'}")
        values[key] = _typed(name, key, value, defaults.get(key)) if key != SCHEDULE \
            else canonical_schedule(name, value)
        _in_range(name, key, values[key], ranges)
    default_arguments = set(cls.train_config.get("optimizer", {})) - {"type"} if cls.trainable else set()
    for key in sorted(default_arguments - accepted):
        if key in given:
            raise BenchmarkError(f"{name}: {values['optimizer']} takes no argument {key!r}")
        values.pop(key)
    return values


def resolve(cls, name: str, settings: MethodSettings) -> Resolved:
    """The resolved settings of method ``name`` (class ``cls``) under ``settings``."""
    given = dict(settings.hparams.get(name, {}))
    try:
        values = checked_values(cls, name, given)
        if settings.epochs is not None and cls.trainable:  # --epochs: over everything else
            values = checked_values(cls, name, {**given, "epochs": settings.epochs})
        kwargs, train = split_hparams(cls, values)
    except TypeError as exc:  # a method whose declarations contradict each other
        raise BenchmarkError(f"{name}: {exc}") from None
    return Resolved(kwargs, train, settings.selection.get(name))


def variant_class(base, name: str, hparams: dict):
    """A config variant: a subclass of ``base`` named ``name`` with ``hparams`` as defaults."""
    typed = {k: v for k, v in checked_values(base, name, hparams).items() if k in hparams}
    settings = ", ".join(f"{k}={v!r}" for k, v in typed.items())
    try:
        return type(f"{base.__name__}_{name.replace('-', '_')}", (base,),
                    {"name": name, "variant_hparams": typed, "__module__": base.__module__,
                     "__doc__": f"Config variant of {base.name}: {settings}."})
    except TypeError as exc:
        raise BenchmarkError(f"variant {name!r}: {exc}") from None
