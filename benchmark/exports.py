"""Everything in ``leaderboards/``, as a pure function of the result records.

* ``records.jsonl``: the ok records, one JSON object a line, sorted by run id, keys sorted,
  floats rounded to ``FLOAT_DIGITS`` significant digits, time-varying fields
  (``VOLATILE_FIELDS``) dropped. It is the committed source of every other file:
  ``python -m benchmark leaderboard --records leaderboards/records.jsonl`` regenerates them.
* ``<dataset>.md``: the leaderboard pages (:mod:`benchmark.leaderboard`), rendered from the
  records *after* the export round trip, so a page made from the SQLite store and one made
  from ``records.jsonl`` are byte-identical.
* ``plots/*.png``: mAP against bits, one plot per dataset, setting and protocol
  (matplotlib Agg, default style, no metadata: the same records give the same bytes).
* ``papers.md``: numbers quoted from papers (``paper_results.json``), never mixed with
  measured rows.
* ``README.md``: the index, stating the protocol of every table.
"""
from __future__ import annotations

import io
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from registry.loading import one_line

from . import leaderboard
from .errors import BenchmarkError

FLOAT_DIGITS = 6
VOLATILE_FIELDS = ("wall_time",)
RECORDS_FILE = "records.jsonl"
PAPERS_FILE = "paper_results.json"
PLOTS_DIR = "plots"
#: the grid ``make leaderboard`` runs (README and index text; the Makefile takes its methods
#: from ``list --default-grid``): the baselines, the sanity baselines and thesis-sld (the one
#: thesis method on pooled features). Ablation variants and the thesis methods that read
#: stage maps (thesis-msd, -mad, -ddl; one default thesis-ddl run took 13 minutes on this
#: shared 2-core machine) are measured in leaderboards/thesis and leaderboards/ablations.
DEFAULT_GRID = {"dataset": "cub100", "regime": "frozen", "bits": (12, 24, 32, 48),
                "seeds": (0, 1, 2),
                "methods": ("lsh", "itq", "dsh", "dpsh", "hashnet", "greedyhash", "csq",
                            "orthohash", "fish", "a2net", "a2netpp", "cmbh", "thesis-sld")}


# ----------------------------------------------------------------------------- records

def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.{FLOAT_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def stable_record(record: dict) -> dict:
    """The record as exported: volatile fields dropped, floats rounded."""
    return _rounded({k: v for k, v in record.items() if k not in VOLATILE_FIELDS})


def dumps_records(records: list[dict]) -> str:
    """JSON lines of the ok records, sorted by run id."""
    ok = sorted((stable_record(r) for r in records if r.get("status") == "ok"),
                key=lambda r: r["run_id"])
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in ok)


def loads_records(text: str, source: str = RECORDS_FILE) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{source} line {number}: not JSON ({exc.msg})") from None
        missing = [k for k in ("run_id", "method", "dataset", "bits", "seed", "spec", "metrics")
                   if k not in record] if isinstance(record, dict) else ["(not an object)"]
        if missing:
            raise BenchmarkError(f"{source} line {number}: missing {', '.join(missing)}")
        records.append(record)
    return records


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"no records file at {path}")
    return loads_records(path.read_text(encoding="utf-8"), str(path))


def normalised(records: list[dict]) -> list[dict]:
    """The records exactly as ``records.jsonl`` will give them back."""
    return loads_records(dumps_records(records))


# ----------------------------------------------------------------------------- grouping

def setting_of(record: dict) -> tuple:
    spec = record["spec"]
    return (spec.get("regime", record.get("regime")), spec.get("backbone", record.get("backbone")),
            spec.get("input_size"))


def protocol_text(record: dict) -> str:
    """The requested protocol's fields that are switched on (not None, 0 or 1), e.g.
    "noise=symmetric:0.2"; "clean" when none is."""
    protocol = record["spec"].get("protocol") or {}
    on = [f"{k}={v}" for k, v in sorted(protocol.items())
          if isinstance(v, (str, int, float)) and v not in (0, 1, "")]
    return ", ".join(on) or "clean"


def _groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """(dataset, setting, protocol) -> records."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], setting_of(r), protocol_text(r))].append(r)
    return dict(sorted(groups.items(), key=lambda kv: json.dumps(kv[0], default=str)))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")


def plot_name(dataset: str, setting: tuple, protocol: str) -> str:
    regime, backbone, size = setting
    return f"{_slug(dataset)}__{_slug(f'{regime}_{backbone}_{size}px')}__{_slug(protocol)}.png"


# ----------------------------------------------------------------------------- plots

def _series(records: list[dict]) -> dict[str, list[tuple]]:
    """method -> [(bits, mean mAP %, std %)] over bit lengths that have every seed."""
    seeds = {r["seed"] for r in records}
    values: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        values[(r["method"], r["bits"])].append(100 * r["metrics"]["map"])
    series: dict[str, list[tuple]] = defaultdict(list)
    for (method, bits), maps in sorted(values.items()):
        if len(maps) == len(seeds):
            std = statistics.stdev(maps) if len(maps) > 1 else 0.0
            series[method].append((bits, statistics.fmean(maps), std))
    return dict(sorted(series.items()))


def render_plot(title: str, records: list[dict]) -> bytes:
    """PNG of mAP (%) against bits, one line per method (error bars: std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        figure = Figure(figsize=(7.5, 4.5), dpi=100)
        axes = figure.add_subplot()
        markers = "osD^v<>ph*Xd"
        colours = plt.get_cmap("tab20").colors[0::2] + plt.get_cmap("tab20").colors[1::2]
        series = _series(records)
        for i, (method, points) in enumerate(series.items()):
            bits, means, stds = zip(*points)
            axes.errorbar(bits, means, yerr=stds if any(stds) else None, label=method,
                          marker=markers[i % len(markers)], color=colours[i % len(colours)],
                          capsize=3, linewidth=1.2, markersize=4)
        all_bits = sorted({b for points in series.values() for b, _, _ in points})
        axes.set_xticks(all_bits)
        axes.set_xlabel("bits")
        axes.set_ylabel("mAP@all (%)")
        axes.set_title(title, fontsize=9)
        axes.grid(True, linewidth=0.4, alpha=0.5)
        if series:
            axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        figure.subplots_adjust(left=0.09, right=0.78, bottom=0.12, top=0.9)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def render_plots(records: list[dict]) -> dict[str, bytes]:
    seeds_text = lambda rs: ",".join(map(str, sorted({r["seed"] for r in rs})))  # noqa: E731
    return {f"{PLOTS_DIR}/{plot_name(d, s, p)}":
            render_plot(f"{d}: {s[0]} {s[1]} @{s[2]}px, {p}; seeds {seeds_text(rs)}", rs)
            for (d, s, p), rs in _groups(records).items()}


# ----------------------------------------------------------------------------- papers

def read_papers(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchmarkError(f"{path}: cannot read paper results ({one_line(exc)})") from None
    for number, row in enumerate(rows, 1):
        missing = [k for k in ("method", "dataset", "backbone", "map", "citation", "table")
                   if k not in row]
        if missing:
            raise BenchmarkError(f"{path}: row {number} lacks {', '.join(missing)}")
    return rows


def render_papers(rows: list[dict]) -> str:
    """Quoted numbers, one table per (source table, dataset, backbone)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["citation"], row["table"], row["dataset"], row["backbone"],
                row.get("setting", ""))].append(row)
    out = ["# Quoted from papers (not reproduced here)", "",
           "Every number on this page is copied from the cited paper (`paper_results.json`, "
           "one citation per row); none was measured by this harness. The papers' protocols "
           "differ from ours (full datasets, fine-tuned backbones, their own splits and "
           "model selection), so these rows are not comparable with the measured "
           "leaderboards and are never mixed into them. mAP in %; \"-\" = not reported.", ""]
    for (citation, table, dataset, backbone, setting), group in groups.items():
        bits = sorted({int(b) for row in group for b in row["map"]})
        out += [f"## {dataset}, {backbone}: {table}", "", f"Source: {citation}."]
        if setting:
            out += ["", f"Setting: {setting}"]
        header = ["Method"] + [f"mAP@{b} bits" for b in bits] + ["Here as", "Note"]
        out += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in group:
            cells = [row["method"]]
            for b in bits:
                value = row["map"].get(str(b))
                cells.append(leaderboard.MISSING if value is None else f"{value:.2f}")
            cells += [f"`{row['here']}`" if row.get("here") else leaderboard.MISSING,
                      row.get("note", "")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- index

def _coverage(records: list[dict]) -> tuple[set, set]:
    """(present, wanted) runs: the records' methods x the default grid's bits and seeds."""
    methods = {r["method"] for r in records}
    present = {(r["method"], r["bits"], r["seed"]) for r in records}
    wanted = {(m, b, s) for m in methods for b in DEFAULT_GRID["bits"] for s in DEFAULT_GRID["seeds"]}
    return present, wanted


def is_partial(records: list[dict]) -> bool:
    present, wanted = _coverage(records)
    return not wanted <= present


PARTIAL_NOTE = ("**PARTIAL**: some tables lack runs of the default grid's bits and seeds "
                "(see \"runs\" in [`README.md`](README.md)); `make leaderboard` completes them.")


def _runs_summary(records: list[dict]) -> str:
    methods = {r["method"] for r in records}
    present, wanted = _coverage(records)
    if wanted <= present:
        return f"{len(present)} (complete for bits 12/24/32/48 x seeds 0-2)"
    return (f"{len(present)}: **PARTIAL**, {len(wanted & present)} of the {len(wanted)} runs "
            f"that these {len(methods)} methods x bits 12/24/32/48 x seeds 0-2 make")


def _epochs(records: list[dict]) -> str:
    per_method: dict[str, set] = defaultdict(set)
    for r in records:
        per_method[r["method"]].add((r.get("provenance") or {}).get("epochs"))
    parts = []
    for method, values in sorted(per_method.items()):
        shown = "/".join("?" if v is None else ("fit" if v == 0 else str(v))
                         for v in sorted(values, key=lambda v: (v is None, v)))
        parts.append(f"{method} {shown}")
    return ", ".join(parts)


def default_grid_coverage(records: list[dict]) -> tuple[list[str], list[str]]:
    """(default-grid methods with no record on its dataset and regime, built-in methods
    outside the default grid): the index names both so a short table never looks complete."""
    from registry import load_plugins
    from registry.loading import BUILTIN_DISTRIBUTION
    run = {r["method"] for r in records if r["dataset"] == DEFAULT_GRID["dataset"]
           and r["spec"]["regime"] == DEFAULT_GRID["regime"]}
    builtin = {name for name, entry in load_plugins().methods.items()
               if entry.distribution == BUILTIN_DISTRIBUTION}
    return (sorted(set(DEFAULT_GRID["methods"]) - run),
            sorted(builtin - set(DEFAULT_GRID["methods"])))


def render_index(records: list[dict], plots: dict[str, bytes], pages: dict[str, str],
                 papers: bool) -> str:
    out = ["# Leaderboards", "",
           "Generated by `python -m benchmark leaderboard`; do not edit by hand. Every row of "
           "the dataset pages below is **reproduced here**: the mean over seeds of runs of "
           "this harness, whose records are in [`records.jsonl`](records.jsonl)."]
    if papers:
        out += ["Numbers **quoted from papers** are only in [`papers.md`](papers.md) and are "
                "never mixed into the measured tables."]
    if is_partial(records):
        out += ["", PARTIAL_NOTE.replace("[`README.md`](README.md)", "the tables below")]
    out += ["", "Regenerate:", "", "```sh",
            "make leaderboard          # re-run the default grid (finished runs are reused) and regenerate",
            "python -m benchmark leaderboard --records leaderboards/records.jsonl --out leaderboards",
            "python -m benchmark leaderboard --records leaderboards/records.jsonl --out leaderboards --check  # CI",
            "```", "",
            f"The default grid is {', '.join(DEFAULT_GRID['methods'])} on {DEFAULT_GRID['dataset']}, "
            f"{DEFAULT_GRID['regime']} regime, bits "
            f"{'/'.join(map(str, DEFAULT_GRID['bits']))}, seeds "
            f"{DEFAULT_GRID['seeds'][0]}-{DEFAULT_GRID['seeds'][-1]}. mAP is mAP@all on the "
            "dataset's official split (query = test, database = train), Hamming ranking with "
            "ties broken by database index.", ""]
    not_run, outside = default_grid_coverage(records)
    if not_run:
        out += [f"**Default-grid methods with no run in these records**: {', '.join(not_run)}.", ""]
    if outside:
        out += [f"Built-in methods outside the default grid (ablation variants, and the thesis "
                f"methods on stage maps; measured in their own tables): {', '.join(outside)}.", ""]
    for (dataset, setting, protocol), group in _groups(records).items():
        regime, backbone, size = setting
        page = f"{dataset}.md"
        hardware = sorted({(r.get("provenance") or {}).get("hardware") or "?" for r in group})
        fingerprints = sorted({str(r["spec"].get("data", "?"))[:16] for r in group})
        rows = [("page", f"[{page}]({page})" if page in pages else page),
                ("dataset", f"{dataset} (data fingerprint {', '.join(fingerprints)})"),
                ("regime", regime), ("backbone", f"{backbone} at {size} px"),
                ("protocol", protocol),
                ("methods", ", ".join(sorted({r["method"] for r in group}))),
                ("bits", ", ".join(map(str, sorted({r["bits"] for r in group})))),
                ("seeds", ", ".join(map(str, sorted({r["seed"] for r in group})))),
                ("epochs", _epochs(group)),
                ("runs", _runs_summary(group)),
                ("hardware (latency columns)", "; ".join(hardware)),
                ("plot", f"[{plot_name(dataset, setting, protocol)}]"
                         f"({PLOTS_DIR}/{plot_name(dataset, setting, protocol)})")]
        out += [f"## {dataset}: {regime} {backbone} @{size}px, {protocol}", "",
                "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- all files

def build(records: list[dict], paper_rows: list[dict] | None = None) -> dict[str, bytes]:
    """Relative path -> exact bytes of every generated file."""
    records = normalised(records)
    if not records:
        raise BenchmarkError("no successful runs to build leaderboards from")
    pages = leaderboard.render_all(records)
    plots = render_plots(records)
    files = {RECORDS_FILE: dumps_records(records).encode()}
    footer = ("Every row above is reproduced here: measured by this harness, records in "
              "[`records.jsonl`](records.jsonl)" + ("; numbers quoted from papers are in "
              "[`papers.md`](papers.md), never in these tables." if paper_rows else "."))
    if is_partial(records):
        footer += "\n\n" + PARTIAL_NOTE
    files.update({name: f"{text.rstrip()}\n\n{footer}\n".encode() for name, text in pages.items()})
    files.update(plots)
    if paper_rows:
        files["papers.md"] = render_papers(paper_rows).encode()
    files["README.md"] = render_index(records, plots, pages, bool(paper_rows)).encode()
    return files


def write(files: dict[str, bytes], out: Path) -> list[Path]:
    """Write every file; remove plots this build no longer makes."""
    written = []
    for name, data in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    for extra in _extra_plots(files, out):
        extra.unlink()
    return written


def _extra_plots(files: dict[str, bytes], out: Path) -> list[Path]:
    return sorted(p for p in (out / PLOTS_DIR).glob("*.png")
                  if f"{PLOTS_DIR}/{p.name}" not in files)


def stale(files: dict[str, bytes], out: Path) -> list[str]:
    """Files in ``out`` that differ from the regenerated bytes, are missing, or are plots
    no longer generated."""
    differ = [name for name, data in files.items()
              if not (out / name).is_file() or (out / name).read_bytes() != data]
    return differ + [str(p.relative_to(out)) for p in _extra_plots(files, out)]
