"""The training-setup table under each leaderboard table: per method row, what the records
say about how it was trained (selection rule, epochs, optimiser, learning rate, batch size,
non-default hyperparameters). Only what the records hold is shown; "not recorded" where a
record predates a field."""
from __future__ import annotations

import json
from collections import defaultdict

from .grouping import row_labels, variant_key
from .markdown import escape, table

UNKNOWN = "not recorded"


def train_config_of(record: dict) -> dict | None:
    """The effective training config a record carries (``spec.train``), if any."""
    for part in (record.get("spec") or {}, record.get("provenance") or {}):
        for key in ("train", "train_config"):
            if isinstance(part.get(key), dict):
                return part[key]
    return None


def _selection(record: dict) -> str:
    selection = (record.get("provenance") or {}).get("selection") or {}
    rule = selection.get("rule", UNKNOWN)
    val = (record.get("spec") or {}).get("protocol", {}).get("val_frac") or 0
    extra = [f"{k} {v}" for k, v in sorted(selection.items())
             if k not in ("rule", "val_map", "epoch", "best_val_map") and not isinstance(v, (list, dict))]
    return ", ".join([rule] + ([f"val_frac {val}"] if val else []) + extra) + _tuning(record)


def _tuning(record: dict) -> str:
    """How a tuned config chose the run's hyperparameters (``spec.selection``), if it did."""
    tuned = (record.get("spec") or {}).get("selection")
    if not tuned:
        return ""
    split = tuned.get("split") or {}
    return (f"; hyperparameters tuned: {tuned.get('trials')} trials on {split.get('dataset')} "
            f"validation (val_frac {split.get('val_frac')}, {tuned.get('bits')} bits, at most "
            f"{tuned.get('epoch_cap')} epochs), best val {tuned.get('objective')} {tuned.get('best_value')}")


def _epochs(record: dict) -> str:
    epochs = (record.get("provenance") or {}).get("epochs")
    return UNKNOWN if epochs is None else ("fit (closed form)" if epochs == 0 else str(epochs))


def _optimiser(config: dict | None) -> tuple[str, str, str]:
    if config is None:
        return UNKNOWN, UNKNOWN, UNKNOWN
    optimiser = dict(config.get("optimizer") or {})
    kind, lr = optimiser.pop("type", "?"), optimiser.pop("lr", "?")
    rest = ", ".join(f"{k} {v}" for k, v in sorted(optimiser.items()))
    return (f"{kind}" + (f" ({rest})" if rest else ""), str(lr), str(config.get("batch_size", "?")))


def non_default_hparams(record: dict) -> dict | None:
    """Hyperparameters that differ from the method's defaults, when the record names the
    defaults (``provenance.hparam_defaults``); None when it does not."""
    hparams = (record.get("spec") or {}).get("hparams") or {}
    defaults = (record.get("provenance") or {}).get("hparam_defaults")
    if defaults is None:
        return None
    return {k: v for k, v in sorted(hparams.items()) if k not in defaults or defaults[k] != v}


def _hparams(record: dict) -> str:
    """The non-default hyperparameters, or (``*``) every resolved one the spec holds."""
    changed = non_default_hparams(record)
    shown = (record.get("spec") or {}).get("hparams") or {} if changed is None else changed
    text = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(shown.items()))
    return (text or "none") + (" *" if changed is None and text else "")


def _facts(record: dict) -> tuple:
    if (record.get("provenance") or {}).get("epochs") == 0:
        return ("closed form", _epochs(record), "-", "-", "-", _hparams(record))
    return (_selection(record), _epochs(record), *_optimiser(train_config_of(record)),
            _hparams(record))


def render_setup(records: list[dict]) -> str:
    """One line per method row (variant), the distinct facts of its runs joined by " / "."""
    labels = row_labels(records)
    facts: dict[str, list[set]] = defaultdict(lambda: [set() for _ in range(6)])
    for r in records:
        for slot, value in zip(facts[labels[(r["method"], variant_key(r))]], _facts(r)):
            slot.add(value)
    rows = [[escape(label)] + [escape(" / ".join(sorted(slot))) for slot in slots]
            for label, slots in sorted(facts.items())]
    header = ["Method", "Selection", "Epochs", "Optimiser", "LR", "Batch", "Hyperparameters (non-default)"]
    starred = any(text.endswith(" *") for slots in facts.values() for text in slots[5])
    return ("Training setup (from the records" + ("; hyperparameters marked * are every resolved "
            "value, the records not naming the defaults" if starred else "") + "):\n\n"
            + table(header, rows))
