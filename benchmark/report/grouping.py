"""How records group into tables, rows and cells.

A table is a (dataset, setting = regime, backbone, input size); a row is a (protocol,
method, variant); a cell adds the bit length and holds the row's seeds. The *variant* is
everything else that makes two runs different experiments: the spec without its seed, bits
and table fields (so the plugin version, hyperparameters, backbone weights, code digest and
whatever identity fields a spec gains), with the effective epochs in place of the CLI
override. Runs of one method that differ in any of these never share a cell: they are
separate rows, labelled with the fields that differ.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict

from ..grid.protocols import protocol_label
from .markdown import safe_name

#: spec fields that place a run in a table or a cell, not in a variant
PLACE_FIELDS = ("method", "plugin", "dataset", "regime", "backbone", "input_size", "protocol",
                "bits", "seed")


def setting_of(record: dict) -> tuple:
    spec = record["spec"]
    return (spec.get("regime", record.get("regime")), spec.get("backbone", record.get("backbone")),
            spec.get("input_size"))


def protocol_text(record: dict) -> str:
    """The run's switched-on protocol fields, e.g. "noise=symmetric:0.2"; "clean" if none."""
    return protocol_label(record["spec"].get("protocol") or {})


HEADLINE = "map_tie_aware"


def headline_key(records: list[dict]) -> str:
    """``map_tie_aware`` when every record has it, else the index-tie ``map``."""
    return HEADLINE if all(HEADLINE in r["metrics"] for r in records) else "map"


def is_degenerate(record: dict) -> bool:
    """The record's health flag (absent: not flagged)."""
    return bool((record.get("health") or {}).get("degenerate"))


def variant_of(record: dict) -> dict:
    """The fields beyond method, protocol, bits and seed that identify the experiment."""
    spec = record.get("spec") or {}
    variant = {k: v for k, v in spec.items() if k not in PLACE_FIELDS}
    epochs = (record.get("provenance") or {}).get("epochs")
    variant["epochs"] = spec.get("epochs") if epochs is None else epochs
    variant.setdefault("version", record.get("version"))
    return variant


def variant_key(record: dict) -> str:
    return json.dumps(variant_of(record), sort_keys=True, default=str)


def _shown(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_shown(v)}" for k, v in sorted(value.items())) or "{}"
    text = "?" if value is None else str(value)
    return text if len(text) <= 16 else text[:12] + "…"


def row_labels(records: list[dict]) -> dict[tuple, str]:
    """(method, variant key) -> row label: the method name, plus the variant fields whose
    values differ among that method's runs in these records (e.g. "dsh (epochs 90)")."""
    variants: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        variants[r["method"]][variant_key(r)] = variant_of(r)
    labels = {}
    for method, by_key in variants.items():
        fields = sorted({k for v in by_key.values() for k in v})
        differing = [f for f in fields if len({json.dumps(v.get(f), sort_keys=True, default=str)
                                               for v in by_key.values()}) > 1]
        for key, variant in by_key.items():
            extra = ", ".join(f"{f} {_shown(variant.get(f))}" for f in differing)
            labels[(method, key)] = f"{method} ({extra})" if extra else method
    return labels


def groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """(dataset, setting, protocol) -> records."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_key[(r["dataset"], setting_of(r), protocol_text(r))].append(r)
    return dict(sorted(by_key.items(), key=lambda kv: json.dumps(kv[0], default=str)))


def page_name(dataset: str) -> str:
    return f"{safe_name(dataset)}.md"


def plot_name(dataset: str, setting: tuple, protocol: str, kind: str = "") -> str:
    """``<dataset>__<setting>__<protocol>[__<kind>].png``; every part sanitised."""
    regime, backbone, size = setting
    parts = [safe_name(dataset), _plain(f"{regime}_{backbone}_{size}px"), _plain(protocol)]
    return "__".join(parts + ([kind] if kind else [])) + ".png"


def _plain(text: str) -> str:
    """Harness-made text (setting, protocol label) as a file-name part: no digest, as the
    committed plot names have it; names from plugins go through :func:`safe_name`."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_").lstrip(".") or "_"
