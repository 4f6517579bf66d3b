"""``papers.md``: numbers quoted from papers (``paper_results.json``), one citation per
row, never mixed with measured rows."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from registry.loading import one_line

from ..errors import BenchmarkError
from .markdown import code, escape, table

MISSING = "-"

PAPERS_FILE = "paper_results.json"


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
    for (citation, source, dataset, backbone, setting), group in groups.items():
        bits = sorted({int(b) for row in group for b in row["map"]})
        out += [f"## {escape(dataset)}, {escape(backbone)}: {escape(source)}", "",
                f"Source: {escape(citation)}."]
        if setting:
            out += ["", f"Setting: {escape(setting)}"]
        header = ["Method"] + [f"mAP@{b} bits" for b in bits] + ["Here as", "Note"]
        body = [[escape(row["method"])]
                + [MISSING if row["map"].get(str(b)) is None else f"{row['map'][str(b)]:.2f}"
                   for b in bits]
                + [code(row["here"]) if row.get("here") else MISSING, escape(row.get("note", ""))]
                for row in group]
        out += ["", table(header, body)]
        out.append("")
    return "\n".join(out)
