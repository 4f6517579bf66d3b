"""``plots/*.png``: mAP against bits, one plot per dataset, setting and protocol
(matplotlib Agg, default style, no metadata: the same records give the same bytes)."""
from __future__ import annotations

import io
import statistics
from collections import defaultdict

from .grouping import groups, plot_name

PLOTS_DIR = "plots"


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
            for (d, s, p), rs in groups(records).items()}
