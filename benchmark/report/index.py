"""``README.md`` of a leaderboard folder: the index, stating every table's dataset,
regime, backbone, protocol, methods, bits, seeds, epochs, run coverage, failed and
degenerate runs, hardware and plots."""
from __future__ import annotations

from collections import defaultdict

from ..grid.defaults import DEFAULT_GRID
from .grouping import groups, is_degenerate, page_name
from .markdown import escape, table
from .plots import PLOTS_DIR, plot_specs


def _coverage(records: list[dict]) -> tuple[set, set]:
    """(present, wanted) runs: the records' methods x the default grid's bits and seeds."""
    methods = {r["method"] for r in records}
    present = {(r["method"], r["bits"], r["seed"]) for r in records}
    wanted = {(m, b, s) for m in methods for b in DEFAULT_GRID["bits"] for s in DEFAULT_GRID["seeds"]}
    return present, wanted


def is_partial(records: list[dict]) -> bool:
    present, wanted = _coverage(records)
    return not wanted <= present


def _grid_text() -> str:
    seeds = DEFAULT_GRID["seeds"]
    return f"bits {'/'.join(map(str, DEFAULT_GRID['bits']))} x seeds {seeds[0]}-{seeds[-1]}"


PARTIAL_NOTE = ("**PARTIAL**: some tables lack runs of the default grid's bits and seeds "
                "(see \"runs\" in [`README.md`](README.md)); `make leaderboard` completes them.")


def _runs_summary(records: list[dict]) -> str:
    if not records:
        return "0 ok"
    methods = {r["method"] for r in records}
    present, wanted = _coverage(records)
    if wanted <= present:
        return f"{len(present)} (complete for {_grid_text()})"
    return (f"{len(present)}: **PARTIAL**, {len(wanted & present)} of the {len(wanted)} runs "
            f"that these {len(methods)} methods x {_grid_text()} make")


def _epochs(records: list[dict]) -> str:
    per_method: dict[str, set] = defaultdict(set)
    for r in records:
        per_method[r["method"]].add((r.get("provenance") or {}).get("epochs"))
    parts = []
    for method, values in sorted(per_method.items()):
        shown = "/".join("?" if v is None else ("fit" if v == 0 else str(v))
                         for v in sorted(values, key=lambda v: (v is None, v)))
        parts.append(f"{escape(method)} {shown}")
    return ", ".join(parts)


def default_grid_coverage(records: list[dict], builtin: set[str]) -> tuple[list[str], list[str]]:
    """(default-grid methods with no record on its dataset and regime, built-in methods
    outside the default grid): the index names both so a short table never looks complete."""
    run = {r["method"] for r in records if r["dataset"] == DEFAULT_GRID["dataset"]
           and r["spec"]["regime"] == DEFAULT_GRID["regime"]}
    return (sorted(set(DEFAULT_GRID["methods"]) - run),
            sorted(set(builtin) - set(DEFAULT_GRID["methods"])))


def _problems(ok: list[dict], failed: list[dict]) -> list[tuple[str, str]]:
    def run(r):
        return f"{escape(r['method'])} {r['bits']}b seed {r['seed']}"
    def order(r):
        return (r["method"], r["bits"], r["seed"], r["run_id"])
    degenerate = sorted((r for r in ok if is_degenerate(r)), key=order)
    failed = sorted(failed, key=order)
    return [("failed runs", f"{len(failed)}" + "".join(
                f"; {run(r)}: {escape(r.get('error') or '?')}" for r in failed)),
            ("degenerate runs", f"{len(degenerate)}" + "".join(f"; {run(r)}" for r in degenerate))]


def _section(key: tuple, ok: list[dict], failed: list[dict], pages: dict) -> list[str]:
    (dataset, setting, protocol), group = key, ok or failed  # what the table holds
    regime, backbone, size = setting
    page = page_name(dataset)
    hardware = sorted({(r.get("provenance") or {}).get("hardware") or "?" for r in ok})
    fingerprints = sorted({str(r["spec"].get("data", "?"))[:16] for r in ok + failed})
    plots = [f"[{name}]({PLOTS_DIR}/{name})" for name, _, _, _ in plot_specs(ok)]
    rows = [("page", f"[{page}]({page})" if page in pages else page),
            ("dataset", f"{escape(dataset)} (data fingerprint {', '.join(map(escape, fingerprints))})"),
            ("regime", escape(regime)), ("backbone", f"{escape(backbone)} at {size} px"),
            ("protocol", escape(protocol)),
            ("methods", ", ".join(escape(m) for m in sorted({r["method"] for r in group}))),
            ("bits", ", ".join(map(str, sorted({r["bits"] for r in group})))),
            ("seeds", ", ".join(map(str, sorted({r["seed"] for r in group})))),
            ("epochs", _epochs(ok)), ("runs", _runs_summary(ok)), *_problems(ok, failed),
            ("hardware (latency columns)", "; ".join(escape(h) for h in hardware)),
            ("plots", ", ".join(plots) or "-")]
    return [f"## {escape(dataset)}: {escape(regime)} {escape(backbone)} @{size}px, {escape(protocol)}",
            "", table(["field", "value"], [list(row) for row in rows]), ""]


def _header(ok: list[dict], failed: list[dict], papers: bool) -> list[str]:
    degenerate = sum(is_degenerate(r) for r in ok)
    out = ["# Leaderboards", "",
           "Generated by `python -m benchmark leaderboard`; do not edit by hand. Every row of "
           "the dataset pages below is **reproduced here**: the mean over seeds of runs of "
           "this harness, whose records are in [`records.jsonl`](records.jsonl)"
           + (" (failed runs in [`failures.jsonl`](failures.jsonl))." if failed else ".")]
    if papers:
        out += ["Numbers **quoted from papers** are only in [`papers.md`](papers.md) and are "
                "never mixed into the measured tables."]
    out += ["", f"Runs: {len(ok)} ok ({degenerate} flagged degenerate), {len(failed)} failed; "
                "each page lists its failed and degenerate runs with the command that re-runs them."]
    if ok and is_partial(ok):
        out += ["", PARTIAL_NOTE.replace("[`README.md`](README.md)", "the tables below")]
    return out


def render_index(ok: list[dict], failed: list[dict], pages: dict[str, str], papers: bool,
                 builtin: set[str]) -> str:
    out = _header(ok, failed, papers)
    out += ["", "Regenerate:", "", "```sh",
            "make leaderboard          # re-run the default grid (finished runs are reused) and regenerate",
            "python -m benchmark leaderboard --records leaderboards/records.jsonl --out leaderboards",
            "python -m benchmark leaderboard --records leaderboards/records.jsonl --out leaderboards --check  # CI",
            "```", "",
            f"The default grid is {', '.join(DEFAULT_GRID['methods'])} on {DEFAULT_GRID['dataset']}, "
            f"{DEFAULT_GRID['regime']} regime, {_grid_text()}, with the hyperparameters that an "
            f"equal-budget tune on a validation split chose (`{DEFAULT_GRID['config']}`; each "
            "page's setup table shows them and their selection rule). The headline is the tie-aware "
            "mAP@all (expected AP when items at equal Hamming distance are ordered at random) on "
            "the dataset's official split (query = test, database = train); the index tie-break "
            "mAP (`map`) stays in the records.", ""]
    not_run, outside = default_grid_coverage(ok, builtin)
    if not_run:
        out += [f"**Default-grid methods with no run in these records**: {', '.join(not_run)}.", ""]
    if outside:
        out += [f"Built-in methods outside the default grid (ablation variants, and the thesis "
                f"methods on stage maps; measured in their own tables): {', '.join(outside)}.", ""]
    by_key = groups(ok + failed)
    for key, group in by_key.items():
        out += _section(key, [r for r in group if r["status"] == "ok"],
                        [r for r in group if r["status"] != "ok"], pages)
    return "\n".join(out)
