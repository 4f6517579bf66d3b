"""How records group into tables: setting (regime, backbone, input size), protocol text,
and the file names derived from them."""
from __future__ import annotations

import json
import re
from collections import defaultdict

from ..grid.protocols import protocol_label


def setting_of(record: dict) -> tuple:
    spec = record["spec"]
    return (spec.get("regime", record.get("regime")), spec.get("backbone", record.get("backbone")),
            spec.get("input_size"))


def protocol_text(record: dict) -> str:
    """The run's switched-on protocol fields, e.g. "noise=symmetric:0.2"; "clean" if none."""
    return protocol_label(record["spec"].get("protocol") or {})


def groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """(dataset, setting, protocol) -> records."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_key[(r["dataset"], setting_of(r), protocol_text(r))].append(r)
    return dict(sorted(by_key.items(), key=lambda kv: json.dumps(kv[0], default=str)))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")


def plot_name(dataset: str, setting: tuple, protocol: str) -> str:
    regime, backbone, size = setting
    return f"{slug(dataset)}__{slug(f'{regime}_{backbone}_{size}px')}__{slug(protocol)}.png"
