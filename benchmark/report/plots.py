"""``plots/*.png`` (matplotlib Agg, default style, no metadata: the same records give the
same bytes), per dataset and setting:

* ``<d>__<setting>__<protocol>.png``: headline mAP against bits, one line per row (error
  bars: 95% confidence half-width over seeds; bit lengths that have every seed);
* ``...__pr.png``: precision against recall by Hamming radius at one bit length, mean over
  seeds, from the records' ``pr`` (``runs/<id>/pr.npz``, attached by ``leaderboard
  --results``); made only when the records carry it;
* ``<d>__<setting>__clean__efficiency.png``: headline mAP against encode latency and
  against inference parameters at one bit length, the efficiency frontier (rows no other
  row beats on both axes) joined by a line.

The bit length of the last two is the one most rows have (ties: the largest).
"""
from __future__ import annotations

import io
import statistics
from collections import Counter, defaultdict

import numpy as np

from .grouping import groups, headline_key, is_degenerate, plot_name, row_labels, variant_key
from .stats import mean_halfwidth

PLOTS_DIR = "plots"
MARKERS = "osD^v<>ph*Xd"


def _text(value: str) -> str:
    """A name as matplotlib text: ``$`` would start mathtext."""
    return str(value).replace("$", r"\$")


def _by_row(records: list[dict]) -> dict[str, list[dict]]:
    labels = row_labels(records)
    rows: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        label = labels[(r["method"], variant_key(r))]
        rows[label + (" (degenerate)" if is_degenerate(r) else "")].append(r)
    return dict(sorted(rows.items()))


def common_bits(records: list[dict]) -> int:
    per_bits = Counter(b for _, _, b in {(r["method"], variant_key(r), r["bits"]) for r in records})
    return max(per_bits, key=lambda b: (per_bits[b], b))


def _figure(width: float = 7.5, height: float = 4.5):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    matplotlib.rcdefaults()
    return Figure(figsize=(width, height), dpi=100)


def _colours():
    from matplotlib import pyplot as plt
    return plt.get_cmap("tab20").colors[0::2] + plt.get_cmap("tab20").colors[1::2]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _legend(axes) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)


def render_bits_plot(title: str, records: list[dict]) -> bytes:
    key = headline_key(records)
    seeds = len({r["seed"] for r in records})
    figure = _figure()
    axes = figure.add_subplot()
    colours, shown_bits = _colours(), set()
    for i, (row, rs) in enumerate(_by_row(records).items()):
        per_bits: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            per_bits[r["bits"]].append(100 * r["metrics"][key])
        points = [(b, *mean_halfwidth(v)) for b, v in sorted(per_bits.items()) if len(v) == seeds]
        if not points:
            continue
        bits, means, halves = zip(*points)
        shown_bits |= set(bits)
        errors = [h or 0.0 for h in halves]
        axes.errorbar(bits, means, yerr=errors if any(errors) else None, label=_text(row),
                      marker=MARKERS[i % len(MARKERS)], color=colours[i % len(colours)], capsize=3,
                      linewidth=1.2, markersize=4, linestyle="--" if "(degenerate)" in row else "-")
    axes.set_xticks(sorted(shown_bits))
    axes.set_xlabel("bits")
    axes.set_ylabel(f"{'tie-aware mAP' if key == 'map_tie_aware' else 'mAP'} (%)")
    axes.set_title(_text(title), fontsize=9)
    axes.grid(True, linewidth=0.4, alpha=0.5)
    _legend(axes)
    figure.subplots_adjust(left=0.09, right=0.72, bottom=0.12, top=0.9)
    return _png(figure)


def render_pr_plot(title: str, records: list[dict]) -> bytes:
    figure = _figure()
    axes = figure.add_subplot()
    colours = _colours()
    for i, (row, rs) in enumerate(_by_row(records).items()):
        curves = [r["pr"] for r in rs if r.get("pr")]
        if not curves:
            continue
        precision = np.mean([c["precision"] for c in curves], axis=0)
        recall = np.mean([c["recall"] for c in curves], axis=0)
        axes.plot(recall, 100 * precision, label=_text(row), color=colours[i % len(colours)],
                  marker=MARKERS[i % len(MARKERS)], markersize=3, linewidth=1.1,
                  linestyle="--" if "(degenerate)" in row else "-")
    axes.set_xlabel("recall (Hamming radius 0..bits)")
    axes.set_ylabel("precision (%)")
    axes.set_xlim(0, 1)
    axes.set_title(_text(title), fontsize=9)
    axes.grid(True, linewidth=0.4, alpha=0.5)
    _legend(axes)
    figure.subplots_adjust(left=0.09, right=0.72, bottom=0.12, top=0.9)
    return _png(figure)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (lower cost, higher mAP), by cost."""
    best, out = -np.inf, []
    for cost, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            out.append((cost, value))
            best = value
    return out


def _efficiency_panel(axes, rows: dict, key: str, cost: str, scale: float, xlabel: str) -> None:
    colours, points = _colours(), []
    for i, (row, rs) in enumerate(rows.items()):
        costs = [r["efficiency"][cost] for r in rs if (r["efficiency"] or {}).get(cost) is not None]
        if not costs:
            continue
        point = (statistics.median(costs) / scale, 100 * statistics.fmean(r["metrics"][key] for r in rs))
        points.append(point)
        axes.scatter(*point, color=colours[i % len(colours)], marker=MARKERS[i % len(MARKERS)],
                     s=22, label=_text(row), zorder=3)
    if points:
        axes.plot(*zip(*frontier(points)), color="0.4", linewidth=0.8, linestyle=":", zorder=2)
    axes.set_xlabel(xlabel)
    axes.grid(True, linewidth=0.4, alpha=0.5)


def render_efficiency_plot(title: str, records: list[dict], timings: bool) -> bytes:
    key = headline_key(records)
    rows = _by_row(records)
    figure = _figure(10, 4.2)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    if timings:
        _efficiency_panel(left, rows, key, "encode_latency_ms", 1, "encode ms/img (batch 1)")
    else:
        left.set_xlabel("encode latency not shown: rows timed on different machines")
    _efficiency_panel(right, rows, key, "params", 1e6, "inference parameters (M)")
    left.set_ylabel(f"{'tie-aware mAP' if key == 'map_tie_aware' else 'mAP'} (%)")
    figure.suptitle(_text(title), fontsize=9)
    _legend(right)
    figure.subplots_adjust(left=0.07, right=0.8, bottom=0.13, top=0.88, wspace=0.25)
    return _png(figure)


def plot_specs(records: list[dict]) -> list[tuple]:
    """(file name, kind, title, records) of every plot these ok records make."""
    specs = []
    for (d, s, p), rs in groups(records).items():
        where = f"{d}: {s[0]} {s[1]} @{s[2]}px, {p}"
        seeds = ",".join(map(str, sorted({r["seed"] for r in rs})))
        specs.append((plot_name(d, s, p), "bits", f"{where}; seeds {seeds}", rs))
        bits = common_bits(rs)
        at = [r for r in rs if r["bits"] == bits]
        if any(r.get("pr") for r in at):
            specs.append((plot_name(d, s, p, "pr"), "pr", f"{where}; {bits} bits", at))
        if p == "clean" and any(r["efficiency"] for r in at):
            specs.append((plot_name(d, s, p, "efficiency"), "efficiency",
                          f"{where}; {bits} bits; frontier dotted", at))
    return specs


def render_plots(records: list[dict]) -> dict[str, bytes]:
    out = {}
    for name, kind, title, rs in plot_specs(records):
        if kind == "bits":
            out[f"{PLOTS_DIR}/{name}"] = render_bits_plot(title, rs)
        elif kind == "pr":
            out[f"{PLOTS_DIR}/{name}"] = render_pr_plot(title, rs)
        else:
            machines = {(r.get("provenance") or {}).get("hardware") for r in rs}
            out[f"{PLOTS_DIR}/{name}"] = render_efficiency_plot(title, rs, len(machines) == 1)
    return out
