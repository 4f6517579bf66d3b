"""Leaderboard tables: a pure function of the ok result records (pandas for the grouping,
tabulate for the markdown).

One table per setting (regime, backbone, input size). Rows are (protocol, method, variant)
(:mod:`.grouping`): protocols in a fixed order ("clean" first, then by their text); within a
protocol, rows by their mean headline over the table's bit lengths (then by label), rows
with a degenerate run last. The headline is the tie-aware mAP (``map_tie_aware``; tables
of records that predate it use ``map`` and say so). Each cell is the mean and 95%
confidence half-width over its seeds (:mod:`.stats`), with n shown when the cell has fewer
seeds than the table; the best mean of each protocol and column is bold, cells not
significantly worse than it (Welch's t-test) are marked, degenerate cells are marked and
never ranked. No timestamps: the same records give byte-identical markdown.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd

from .derived import render_ablations, render_retention
from .failures import render_problems
from .grouping import (HEADLINE, headline_key, is_degenerate, page_name, protocol_text,
                       row_labels, setting_of, variant_key)
from .markdown import escape, table
from .plots import PLOTS_DIR, plot_specs
from .setup_table import render_setup
from .stats import ALPHA, mean_halfwidth, tied_with_best

MISSING = "-"
TIE_MARK, DEGENERATE_MARK, ASYMMETRIC_MARK = "≈", "†", "‡"

# efficiency columns after params and MACs: (record key, header, format); timings are
# shown only when every row of a table was measured on the same machine
EFFICIENCY = (("params_train_only", "Train-only params (M)", "{:.3f}"),
              ("encode_latency_ms", "Encode ms/img (batch 1)", "{:.1f}"),
              ("encode_throughput", "Encode img/s (batch 64)", "{:.1f}"),
              ("search_latency_ms", "Search ms/query (top-100)", "{:.3f}"))
SEARCH_1M = ("search_1m_latency_ms", "Search ms/query @1M codes", "{:.3f}")
TIMINGS = {"encode_latency_ms", "encode_throughput", "search_latency_ms", "search_1m_latency_ms"}


def frame(records: list[dict], key: str | None = None) -> pd.DataFrame:
    """One row per record: protocol, row label, bits, seed, headline value, degenerate."""
    key = key or headline_key(records)
    labels = row_labels(records)
    return pd.DataFrame([{"protocol": protocol_text(r), "row": labels[(r["method"], variant_key(r))],
                          "method": r["method"], "bits": r["bits"], "seed": r["seed"],
                          "value": r["metrics"][key], "degenerate": is_degenerate(r), "record": r}
                         for r in records])


@dataclass
class Cell:
    values: list[float]
    degenerate: bool
    best: bool = False
    tied: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)


def cells_of(df: pd.DataFrame) -> dict[tuple, Cell]:
    """(protocol, row, bits) -> Cell, with the best of each (protocol, bits) column and the
    cells tied with it marked; degenerate cells take no part in the ranking."""
    cells = {k: Cell(list(g.sort_values("seed")["value"]), bool(g["degenerate"].any()))
             for k, g in df.groupby(["protocol", "row", "bits"], sort=True)}
    columns: dict[tuple, list[Cell]] = {}
    for (protocol, _, bits), cell in cells.items():
        if not cell.degenerate:
            columns.setdefault((protocol, bits), []).append(cell)
    for column in columns.values():
        best = max(column, key=lambda c: c.mean)
        best.best = True
        for cell in column:
            cell.tied = cell is not best and tied_with_best(cell.values, best.values)
    return cells


def format_cell(cell: Cell | None, seeds: int) -> str:
    if cell is None:
        return MISSING
    mean, half = mean_halfwidth(cell.values)
    text = f"{100 * mean:.2f}" + ("" if half is None else f" ± {100 * half:.2f}")
    if cell.best:
        text = f"**{text}**"
    if len(cell.values) < seeds:
        text += f" (n={len(cell.values)})"
    return text + (f" {TIE_MARK}" if cell.tied else "") + (f" {DEGENERATE_MARK}" if cell.degenerate else "")


def ordered_rows(df: pd.DataFrame, cells: dict, bits: list[int]) -> list[tuple]:
    """(protocol, row) in table order: clean first; degenerate rows last; by mean headline."""
    rows = df[["protocol", "row"]].drop_duplicates().itertuples(index=False, name=None)

    def order(row):
        got = [cells.get((*row, b)) for b in bits]
        degenerate = any(c is not None and c.degenerate for c in got)
        score = statistics.fmean([c.mean if c else 0.0 for c in got])
        return (row[0] != "clean", row[0], degenerate, -score, row[1])
    return sorted(rows, key=order)


def _top_efficiency(group: pd.DataFrame, top: int) -> dict | None:
    """The row's efficiency at the table's largest bit length: the median over its seeds
    of every number (architecture numbers are the same for every seed)."""
    effs = [r["efficiency"] for r in group[group["bits"] == top]["record"] if r["efficiency"]]
    if not effs:
        return None
    keys = sorted({k for e in effs for k in e if isinstance(e[k], (int, float))})
    return {k: statistics.median([e[k] for e in effs if k in e]) for k in keys}


def _efficiency_cell(eff: dict | None, key: str, fmt: str, machines: int) -> str:
    if not eff or eff.get(key) is None:
        return MISSING
    if key in TIMINGS and machines != 1:
        return "mixed hw"
    value = eff[key] / 1e6 if key == "params_train_only" else eff[key]
    p95 = eff.get(key.replace("_ms", "_p95_ms")) if key.endswith("_ms") else None
    return fmt.format(value) + (f" (p95 {fmt.format(p95)})" if p95 is not None else "")


def _real_valued_cells(group: pd.DataFrame, seeds: int) -> list[str]:
    """Cosine-ranking mAP of a row's real-valued features (with their dimension), and how
    many times longer a float search takes than a Hamming search, both timed in the run's
    own process (mean over seeds), at the row's largest bit length with such runs."""
    records = [r for r in group["record"] if "map_real" in r["metrics"]]
    if not records:
        return [MISSING, MISSING]
    top = max(r["bits"] for r in records)
    records = [r for r in records if r["bits"] == top]
    dims = sorted({r["efficiency"].get("real_dim") for r in records} - {None})
    timed = [r["efficiency"].get("at_run") or r["efficiency"] for r in records]  # one process
    slower = [t["real_search_latency_ms"] / t["search_latency_ms"]
              for t in timed if t.get("real_search_latency_ms")]
    cell = format_cell(Cell([r["metrics"]["map_real"] for r in records], False), seeds)
    return [f"{cell} ({'/'.join(map(str, dims)) or '?'}-d, {top}b)",
            f"{statistics.fmean(slower):.1f}x" if slower else MISSING]


def hardware_of(record: dict) -> str:
    """Where the record's timings were taken: the ``profile`` process, else the run."""
    profile = (record.get("efficiency") or {}).get("profile") or {}
    return profile.get("hardware") or (record.get("provenance") or {}).get("hardware") or "?"


def is_asymmetric(record: dict) -> bool:
    return bool((record.get("provenance") or {}).get("asymmetric"))


def machines_of(records: list[dict]) -> list[str]:
    return sorted({hardware_of(r) for r in records})


def render_table(records: list[dict]) -> str:
    """The markdown table of one setting, followed by its footnote."""
    df = frame(records)
    bits = sorted(int(b) for b in df["bits"].unique())
    seeds = df["seed"].nunique()
    cells = cells_of(df)
    has_real = any("map_real" in r["metrics"] for r in records)
    has_1m = any(SEARCH_1M[0] in (r["efficiency"] or {}) for r in records)
    efficiency = EFFICIENCY + ((SEARCH_1M,) if has_1m else ())
    header = (["Protocol", "Method"] + [f"mAP@{b} bits" for b in bits]
              + [f"Params (M) @{bits[-1]}b", f"MACs (G, FMA=1) @{bits[-1]}b"]
              + [title for _, title, _ in efficiency]
              + (["Real-valued mAP (dim, bits)", "Float / Hamming search time"] if has_real else [])
              + ["Plugin"])
    machines = machines_of(records)
    lines = []
    for protocol, row in ordered_rows(df, cells, bits):
        group = df[(df["protocol"] == protocol) & (df["row"] == row)]
        eff = _top_efficiency(group, bits[-1])
        degenerate = bool(group["degenerate"].any())
        marks = (f" {ASYMMETRIC_MARK}" if any(map(is_asymmetric, group["record"])) else "") \
            + (f" {DEGENERATE_MARK}" if degenerate else "")
        line = [escape(protocol), escape(row) + marks]
        line += [format_cell(cells.get((protocol, row, b)), seeds) for b in bits]
        line += [f"{eff['params'] / 1e6:.3f}" if eff and "params" in eff else MISSING,
                 f"{eff['macs'] / 1e9:.3f}" if eff and "macs" in eff else MISSING]
        line += [_efficiency_cell(eff, key, fmt, len(machines)) for key, _, fmt in efficiency]
        if has_real:
            line += _real_valued_cells(group, seeds)
        plugins = sorted({f"{r['distribution']} {r['version']}" for r in group["record"]})
        lines.append(line + [escape(", ".join(plugins))])
    return table(header, lines) + "\n\n" + footnote(records, df, seeds)


def footnote(records: list[dict], df: pd.DataFrame, seeds: int) -> str:
    """What the cells and marks mean, and where the cost columns come from."""
    key = headline_key(records)
    parts = [f"Cells: {'tie-aware mAP' if key == HEADLINE else 'mAP (index tie-break: these records predate the tie-aware mAP)'} "
             f"in %, mean ± 95% confidence half-width over seeds (t distribution; one seed: "
             f"the value alone; \"(n=k)\" when a cell has fewer than the table's {seeds}). "
             f"**Bold**: the best mean of its protocol and column; {TIE_MARK}: not "
             f"significantly worse than it (Welch's two-sided t-test on the seeds, p ≥ {ALPHA}; "
             f"needs 2+ seeds on both sides)."]
    if any(map(is_asymmetric, records)):
        parts.append(f"{ASYMMETRIC_MARK}: asymmetric: the database codes are the method's own "
                     "learned codes of the training images (``encode_database``), queries are "
                     "encoded by its network.")
    if df["degenerate"].any():
        parts.append(f"{DEGENERATE_MARK}: a degenerate run (its record's health flag: "
                     "collapsed codes or a loss that never fell); never bold or marked, "
                     "listed below.")
    return " ".join(parts) + "\n\n" + timing_note(records)


def timing_note(records: list[dict]) -> str:
    machines = machines_of(records)
    if len(machines) != 1:
        return (f"Timings not shown: the rows come from {len(machines)} machines "
                f"({'; '.join(escape(m) for m in machines)}).")
    effs = [r["efficiency"] or {} for r in records]
    searched = sorted({e.get("search_db") for e in effs} - {None})
    profiled = [e["profile"] for e in effs if "profile" in e]
    if profiled and len(profiled) == len(effs):
        loads = [x for p in profiled for x in p.get("load_average", [])]
        how = (f"by `python -m benchmark profile`, all rows in one process "
               f"({profiled[0].get('timer', '?')}, {profiled[0].get('threads', '?')} thread(s), "
               f"p50 with p95 in brackets; 1-minute load average {min(loads):.1f} to "
               f"{max(loads):.1f} while it ran)")
    else:
        loads = [r["provenance"]["load_average"] for r in records
                 if "load_average" in (r.get("provenance") or {})]
        how = ("at the end of each run, in that run's process" + (
            f" (1-minute load average {min(loads):.1f} to {max(loads):.1f})" if loads else ""))
    random = any(e.get("search_codes") == "random" for e in effs)
    return (f"Parameters and MACs: inference path (backbone + what `encode` uses); "
            f"timings measured on {escape(machines[0])} {how}; search over the database split "
            f"({', '.join(f'{n:,}' for n in searched) or '?'} codes)"
            + ("; the 1M column over 1,000,000 codes (each run's codes replicated)" if any(
                "search_1m_latency_ms" in e for e in effs) else "")
            + (". Searches of rows whose records came without `codes.npz` ran over random "
               "codes of the run's length and database size (an exhaustive scan's cost does not "
               "depend on the code values)" if random else "") + ".")


INTRO = ("Headline: tie-aware mAP@all in % (expected AP when items at equal Hamming distance "
         "are ordered at random; the index tie-break `map` stays in the records); query = test "
         "split, database = train split. Generated by `python -m benchmark leaderboard`; do not "
         "edit by hand.")


def _plot_links(ok: list[dict]) -> str:
    names = {"bits": "mAP vs bits", "pr": "precision-recall", "efficiency": "efficiency frontier"}
    links = [f"[{names[kind]}, {escape(protocol_text(rs[0]))}]({PLOTS_DIR}/{name})"
             for name, kind, _, rs in plot_specs(ok)]
    return "Plots: " + "; ".join(links) + "." if links else ""


def render_setting(setting: tuple, ok: list[dict], failed: list[dict]) -> list[str]:
    """The section of one setting: table, plots, training setup, derived tables, problems."""
    regime, backbone, size = setting
    out = [f"## {escape(regime)} {escape(backbone)} @{size}px", ""]
    if ok:
        key = headline_key(ok)
        name = "tie-aware mAP" if key == HEADLINE else "mAP"
        seeds = sorted({r["seed"] for r in ok})
        out += [f"Seeds: {', '.join(map(str, seeds))}.", "", render_table(ok), "",
                _plot_links(ok), "", render_setup(ok), ""]
        out += [part + "\n" for part in (render_retention(ok, key, name),
                                         render_ablations(ok, key, name)) if part]
    else:
        out += ["No successful run in this setting.", ""]
    problems = render_problems(ok, failed)
    return out + ([problems, ""] if problems else [])


def render(dataset: str, records: list[dict]) -> str:
    """``<dataset>.md``: one section per setting, from ok and failed records."""
    settings = sorted({setting_of(r) for r in records}, key=lambda s: tuple(map(str, s)))
    out = [f"# Leaderboard: {escape(dataset)}", "", INTRO, ""]
    for setting in settings:
        mine = [r for r in records if setting_of(r) == setting]
        out += render_setting(setting, [r for r in mine if r["status"] == "ok"],
                              [r for r in mine if r["status"] != "ok"])
    return "\n".join(out)


def render_all(records: list[dict]) -> dict[str, str]:
    """Page name -> markdown, for every dataset with records (ok or failed)."""
    by_dataset: dict[str, list[dict]] = {}
    for r in records:
        by_dataset.setdefault(r["dataset"], []).append(r)
    return {page_name(d): render(d, rs) for d, rs in sorted(by_dataset.items())}
