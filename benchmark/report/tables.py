"""Leaderboard markdown: a pure function of the ok result records.

One file per dataset; one table per setting (regime, backbone, input size). Rows are
(protocol, method) pairs: protocols in a fixed order ("clean" first, then by their text),
so a method's clean and noisy / long-tailed / low-resolution rows sit in the same table;
within a protocol, methods are ordered by their mean mAP over the table's bit lengths (then by name);
each mAP cell is mean +- sample std over the table's seeds (the mean alone for one seed). A cell that lacks any of the
table's seeds shows the count instead of a partial mean; a cell with no run shows "-".
No timestamps: the same records give byte-identical markdown.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from .grouping import protocol_text, setting_of

MISSING = "-"


def _setting_title(setting: tuple) -> str:
    regime, backbone, size = setting
    return f"{regime} {backbone} @{size}px"


def _cell(values: list[float], expected: int) -> str:
    if not values:
        return MISSING
    if len(values) < expected:
        return f"({len(values)}/{expected} seeds)"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def render_table(records: list[dict]) -> str:
    bits = sorted({r["bits"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    cells: dict[tuple, list[float]] = defaultdict(list)
    real: dict[tuple, list[dict]] = defaultdict(list)  # runs with a real-valued feature
    cost: dict[str, dict] = {}
    distribution: dict[str, str] = {}
    for r in sorted(records, key=lambda r: (r["method"], r["bits"], r["seed"])):
        row = (protocol_text(r), r["method"])
        cells[(row, r["bits"])].append(r["metrics"]["map"])
        if r["bits"] == bits[-1]:
            cost[row] = r["efficiency"]
        if "map_real" in r["metrics"]:
            real[row].append(r)
        distribution[row] = f"{r['distribution']} {r['version']}"
    methods = sorted(distribution, key=lambda m: (
        m[0] != "clean", m[0],
        -statistics.fmean([statistics.fmean(cells[(m, b)]) if cells[(m, b)] else 0.0 for b in bits]), m))
    header = (["Protocol", "Method"] + [f"mAP@{b} bits" for b in bits]
              + [f"Params (M) @{bits[-1]}b", f"MACs (G, FMA=1) @{bits[-1]}b"]
              + [title for _, title, _ in EFFICIENCY]
              + (["Real-valued mAP (dim, bits)", "Float / Hamming search time"]
                 if real else []) + ["Plugin"])
    machines = sorted({(r.get("provenance") or {}).get("hardware") or "?" for r in records})
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        eff = cost.get(m)
        row = list(m) + [_cell(cells[(m, b)], len(seeds)) for b in bits]
        row += [f"{eff['params'] / 1e6:.3f}" if eff else MISSING,
                f"{eff['macs'] / 1e9:.3f}" if eff else MISSING]
        row += [_efficiency_cell(eff, key, fmt, len(machines)) for key, _, fmt in EFFICIENCY]
        if real:
            row += _real_valued_cells(real.get(m, []), len(seeds))
        row.append(distribution[m])
        lines.append("| " + " | ".join(row) + " |")
    searched = sorted({(eff or {}).get("search_db") for eff in cost.values()} - {None})
    loads = [r["provenance"]["load_average"] for r in records
             if "load_average" in (r.get("provenance") or {})]
    load = f" (1-minute load average {min(loads):.1f} to {max(loads):.1f})" if loads else ""
    if len(machines) == 1:
        lines += ["", f"Parameters and MACs: inference path (backbone + what `encode` uses); "
                      f"timings measured on {machines[0]}{load}; search over the database split "
                      f"({', '.join(f'{n:,}' for n in searched) or '?'} codes)."]
    else:
        lines += ["", f"Timings not shown: the rows come from {len(machines)} machines "
                      f"({'; '.join(machines)})."]
    return "\n".join(lines)


# efficiency columns after params and MACs: (record key, header, format); timings are
# shown only when every row of a table was measured on the same machine
EFFICIENCY = (("params_train_only", "Train-only params (M)", "{:.3f}"),
              ("encode_latency_ms", "Encode ms/img (batch 1)", "{:.1f}"),
              ("encode_throughput", "Encode img/s (batch 64)", "{:.1f}"),
              ("search_latency_ms", "Search ms/query (top-100)", "{:.3f}"))
TIMINGS = {"encode_latency_ms", "encode_throughput", "search_latency_ms"}


def _real_valued_cells(records: list[dict], seeds: int) -> list[str]:
    """Cosine-ranking mAP of a method's real-valued features (with their dimension), and
    how many times longer a float search takes than a Hamming search, both measured in the
    same runs (mean over seeds), at the row's largest bit length with such runs."""
    if not records:
        return [MISSING, MISSING]
    top = max(r["bits"] for r in records)
    records = [r for r in records if r["bits"] == top]
    dims = sorted({r["efficiency"].get("real_dim") for r in records} - {None})
    slower = [r["efficiency"]["real_search_latency_ms"] / r["efficiency"]["search_latency_ms"]
              for r in records if r["efficiency"].get("real_search_latency_ms")]
    return [f"{_cell([r['metrics']['map_real'] for r in records], seeds)} "
            f"({'/'.join(map(str, dims)) or '?'}-d, {top}b)",
            f"{statistics.fmean(slower):.1f}x" if slower else MISSING]


def _efficiency_cell(eff: dict | None, key: str, fmt: str, machines: int) -> str:
    if not eff or eff.get(key) is None:
        return MISSING
    if key in TIMINGS and machines != 1:
        return "mixed hw"
    value = eff[key] / 1e6 if key == "params_train_only" else eff[key]
    return fmt.format(value)


def render(dataset: str, records: list[dict]) -> str:
    by_setting: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_setting[setting_of(r)].append(r)
    out = [f"# Leaderboard: {dataset}", "",
           "mAP@all in % (Hamming ranking, ties broken by database index; query = test split, "
           "database = train split), mean ± sample std over seeds. Generated by "
           "`python -m benchmark leaderboard`; do not edit by hand.", ""]
    for setting in sorted(by_setting):
        group = by_setting[setting]
        seeds = sorted({r["seed"] for r in group})
        out += [f"## {_setting_title(setting)}", "",
                f"Seeds: {', '.join(map(str, seeds))}.", "", render_table(group), ""]
    return "\n".join(out)


def render_all(records: list[dict]) -> dict[str, str]:
    """File name -> markdown, for every dataset with ok records."""
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            by_dataset[r["dataset"]].append(r)
    return {f"{d}.md": render(d, rs) for d, rs in sorted(by_dataset.items())}
