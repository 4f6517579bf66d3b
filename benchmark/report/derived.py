"""Tables derived from the records of one setting, so no page needs hand-typed numbers:

* retention under noise and long tail: a row's mean headline under the protocol divided by
  the same row's (method and variant) clean mean, per bit length; for long-tail protocols
  also the macro mAP (per-class averaged) and its retention;
* ablations: a variant against the method its name extends (``cmbh-b`` against ``cmbh``,
  ``thesis-sld-nolc`` against ``thesis-sld``: the longest other method name followed by
  ``-``), same protocol, bit length, epochs and data, mean over the seeds both have.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from .grouping import is_degenerate, protocol_text, row_labels, variant_key, variant_of
from .markdown import escape, table

MISSING = "-"
#: what a variant and its base must share (their hyperparameters and code may differ)
CONTEXT = ("epochs", "data", "backbone_weights", "on_bad_image")


def _means(records: list[dict], metric: str) -> dict[tuple, dict[int, float]]:
    """(protocol, row label) -> {seed: value}, per bit length: {(protocol, row, bits): ...}."""
    labels = row_labels(records)
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in records:
        if metric in r["metrics"] and not is_degenerate(r):
            out[(protocol_text(r), labels[(r["method"], variant_key(r))], r["bits"])][r["seed"]] = \
                r["metrics"][metric]
    return out


def _ratio_cell(values: dict, clean: dict | None) -> str:
    if not values:
        return MISSING
    mean = statistics.fmean(values.values())
    text = f"{100 * mean:.2f}"
    if clean:
        text += f" ({mean / statistics.fmean(clean.values()):.2f})"
    return text


def _shifted(protocol: str) -> bool:
    return "noise=" in protocol or "long_tail=" in protocol


def render_retention(records: list[dict], key: str, metric_name: str) -> str:
    """Per bit length with noise or long-tail runs: rows, clean mean, then each protocol's
    mean with its retention in brackets; for long tail also the macro mAP table."""
    out = []
    for metric, title, only_long_tail in ((key, metric_name, False), ("macro_map", "macro mAP", True)):
        means = _means(records, metric)
        for bits in sorted({b for (_, _, b) in means}):
            protocols = sorted({p for (p, _, b) in means if b == bits and _shifted(p)
                                and (not only_long_tail or "long_tail=" in p)})
            if not protocols:
                continue
            rows = sorted({row for (p, row, b) in means if b == bits and p in protocols})
            body = [[escape(row), _ratio_cell(means.get(("clean", row, bits), {}), None)]
                    + [_ratio_cell(means.get((p, row, bits), {}), means.get(("clean", row, bits)))
                       for p in protocols] for row in rows]
            header = ["Method", "clean"] + [escape(p) for p in protocols]
            out.append(f"{title} at {bits} bits under noise and long tail, in % (mean over "
                       f"seeds; in brackets the retention: this mean / the same row's clean "
                       f"mean; degenerate runs left out):\n\n" + table(header, body))
    return "\n\n".join(out)


def base_of(method: str, methods: set[str]) -> str | None:
    """The longest other method name that ``method`` extends with ``-...``."""
    bases = [m for m in methods if m != method and method.startswith(m + "-")]
    return max(bases, key=len) if bases else None


def render_ablations(records: list[dict], key: str, metric_name: str) -> str:
    """Each variant against its base (same protocol, bits and ``CONTEXT``); empty when no
    method in these records extends another."""
    methods = {r["method"] for r in records}
    cells: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in records:
        if not is_degenerate(r):
            fields = variant_of(r)
            context = tuple(str(fields.get(k)) for k in CONTEXT)
            cells[(r["method"], protocol_text(r), r["bits"], context)][r["seed"]] = r["metrics"][key]
    rows = []
    for (method, protocol, bits, context), values in sorted(cells.items()):
        base = base_of(method, methods)
        against = cells.get((base, protocol, bits, context)) if base else None
        if not against:
            continue
        seeds = sorted(set(values) & set(against))
        if not seeds:
            continue
        mine = statistics.fmean(values[s] for s in seeds)
        theirs = statistics.fmean(against[s] for s in seeds)
        rows.append([escape(method), escape(base), escape(protocol), str(bits),
                     ",".join(map(str, seeds)), f"{100 * mine:.2f}", f"{100 * theirs:.2f}",
                     f"{100 * (mine - theirs):+.2f}"])
    if not rows:
        return ""
    header = ["Variant", "Base", "Protocol", "Bits", "Seeds", f"{metric_name} %",
              f"base {metric_name} %", "Change"]
    return (f"Ablations: each variant against the method it extends (same protocol, bits, "
            f"epochs and data; mean over the seeds both have):\n\n" + table(header, rows))
