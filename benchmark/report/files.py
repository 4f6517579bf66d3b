"""Everything in a leaderboard folder, as a pure function of the result records.

``records.jsonl`` (:mod:`benchmark.store.records`: the ok records) and ``failures.jsonl``
(the failed ones, the same export; only when there are any) are the committed source; the
pages (:mod:`.tables`) are rendered from the records *after* the export round trip, so a
page made from the SQLite store and one made from the exports are byte-identical; then the
plots (:mod:`.plots`), ``papers.md`` (:mod:`.papers`) and the index (:mod:`.index`).
A run's precision-recall curve (``runs/<id>/pr.npz``) travels in its record as ``pr``
when the leaderboard is made from a results folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BenchmarkError
from ..store.records import RECORDS_FILE, dumps_records, loads_records, normalised, read_records
from ..store.records import stable_record
from . import tables
from .index import PARTIAL_NOTE, is_partial, render_index
from .markdown import confined
from .papers import render_papers
from .plots import PLOTS_DIR, render_plots

FAILURES_FILE = "failures.jsonl"
PAGE_TITLE = b"# Leaderboard: "


def with_pr_curves(records: list[dict], results: Path) -> list[dict]:
    """Each ok record with its ``runs/<id>/pr.npz`` as ``pr`` (precision, recall lists)."""
    out = []
    for record in records:
        path = Path(results) / "runs" / str(record["run_id"]) / "pr.npz"
        if record.get("status") == "ok" and path.is_file():
            with np.load(path) as pr:
                record = dict(record, pr={"precision": pr["precision"].tolist(),
                                          "recall": pr["recall"].tolist()})
        out.append(record)
    return out


def load(results: Path | None = None, records_file: Path | None = None) -> list[dict]:
    """Every record (ok and failed) of a results folder's store or of an export (with the
    ``failures.jsonl`` beside it)."""
    from ..store.sqlite import ResultStore
    if records_file is not None:
        records = read_records(records_file)
        failures = Path(records_file).parent / FAILURES_FILE
        return records + (read_records(failures) if failures.is_file() else [])
    store_path = Path(results) / "results.sqlite"
    if not store_path.is_file():
        raise BenchmarkError(f"no result store at {store_path}")
    with ResultStore(store_path) as store:
        return with_pr_curves(store.records(), Path(results))


def dumps_failures(records: list[dict]) -> str:
    failed = sorted((stable_record(r) for r in records if r.get("status") != "ok"),
                    key=lambda r: r["run_id"])
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in failed)


def build(records: list[dict], paper_rows: list[dict] | None = None,
          builtin: set[str] = frozenset()) -> dict[str, bytes]:
    """Relative path -> exact bytes of every generated file; ``builtin`` names the
    project's own methods (the index lists those outside the default grid)."""
    ok = normalised(records)
    failed_text = dumps_failures(records)
    failed = loads_records(failed_text, FAILURES_FILE)
    if not ok and not failed:
        raise BenchmarkError("no runs to build leaderboards from")
    pages = tables.render_all(ok + failed)
    files = {RECORDS_FILE: dumps_records(ok).encode()}
    if failed:
        files[FAILURES_FILE] = failed_text.encode()
    footer = ("Every row above is reproduced here: measured by this harness, records in "
              "[`records.jsonl`](records.jsonl)" + ("; numbers quoted from papers are in "
              "[`papers.md`](papers.md), never in these tables." if paper_rows else "."))
    if ok and is_partial(ok):
        footer += "\n\n" + PARTIAL_NOTE
    files.update({name: f"{text.rstrip()}\n\n{footer}\n".encode() for name, text in pages.items()})
    files.update(render_plots(ok) if ok else {})
    if paper_rows:
        files["papers.md"] = render_papers(paper_rows).encode()
    files["README.md"] = render_index(ok, failed, pages, bool(paper_rows), builtin).encode()
    return files


def _extras(files: dict[str, bytes], out: Path) -> list[Path]:
    """Generated-looking files in ``out`` that this build does not make: plots, dataset
    pages (markdown starting with the page title) and a failures export."""
    out = Path(out)
    candidates = list((out / PLOTS_DIR).glob("*.png")) + [out / FAILURES_FILE]
    candidates += [p for p in out.glob("*.md") if p.read_bytes().startswith(PAGE_TITLE)]
    return sorted(p for p in candidates
                  if p.is_file() and str(p.relative_to(out).as_posix()) not in files)


def write(files: dict[str, bytes], out: Path) -> list[Path]:
    """Write every file (inside ``out`` only); remove what this build no longer makes."""
    written = []
    for name, data in files.items():
        path = confined(out, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    for extra in _extras(files, out):
        extra.unlink()
    return written


def stale(files: dict[str, bytes], out: Path) -> list[str]:
    """Files in ``out`` that differ from the regenerated bytes, are missing, or are
    generated files (plots, dataset pages, failures) that this build no longer makes."""
    differ = [name for name, data in files.items()
              if not (out / name).is_file() or (out / name).read_bytes() != data]
    return differ + [str(p.relative_to(out)) for p in _extras(files, out)]
