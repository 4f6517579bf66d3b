"""A run's files agree with its row in the store, even when the process is killed.

A run writes its files (codes, precision-recall, log) into ``runs/<id>.partial/``; only
after its row is stored does that folder become ``runs/<id>/`` (:func:`publish`). A run
that starts again first drops its old row, then its old files (:func:`discard`), so while
it runs neither exists. What a killed process leaves is settled at the start of the next
grid (:func:`settle`): a partial folder whose row was stored is published, any other
partial folder and any run folder without a row are removed.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

PARTIAL = ".partial"
RUN_ID = re.compile(r"[0-9a-f]{16}")  # grid.runs.run_id_of


def run_folder(out, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def partial_folder(out, run_id: str) -> Path:
    return Path(out) / "runs" / f"{run_id}{PARTIAL}"


def publish(out, run_id: str) -> None:
    """After the run's row is stored: its partial folder becomes its folder."""
    partial = partial_folder(out, run_id)
    if partial.is_dir():
        os.replace(partial, run_folder(out, run_id))


def discard(out, store, run_id: str) -> None:
    """Before a run starts again: its old row, then its old files (a kill in between leaves
    files without a row, which :func:`settle` removes)."""
    if store.status(run_id) is not None:
        store.delete(run_id)
    for folder in (run_folder(out, run_id), partial_folder(out, run_id)):
        shutil.rmtree(folder, ignore_errors=True)


def settle(out, store) -> list[str]:
    """Finish or remove what a killed run left in ``out/runs``; returns the folders removed.
    Only folders named like run ids are touched."""
    runs, removed = Path(out) / "runs", []
    if not runs.is_dir():
        return removed
    for path in sorted(runs.iterdir()):
        run_id = path.name.removesuffix(PARTIAL)
        if not (path.is_dir() and RUN_ID.fullmatch(run_id)):
            continue
        stored = store.status(run_id) is not None
        if path.name != run_id and stored and not run_folder(out, run_id).exists():
            os.replace(path, run_folder(out, run_id))  # row stored, then killed: finish it
        elif path.name != run_id or not stored:
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
