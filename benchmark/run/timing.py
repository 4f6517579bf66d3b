"""Where one run's time goes: the record's ``provenance.timing`` (wall seconds per step).

Steps: ``data`` (the materialised protocol and the run's input source: opening the feature
cache, extracting it when absent, building the finetune backbone), ``train`` (constructing
the method, every epoch with its hooks and validation selection, or a closed-form fit),
``train_epochs`` (each epoch's pass over its batches, as ``loop.train``'s ``epoch_log`` times
it; with a validation split the selection training's epochs come first), ``encode`` (queries,
database and real-valued features), ``evaluate`` (every metric from one ranking),
``profile`` (params, MACs, latencies) and ``store`` (the run's files beside the store: codes
and precision-recall). Steps that run twice (selection, then retraining) add up.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

STEPS = ("data", "train", "encode", "evaluate", "profile", "store")


class RunTiming:
    """Accumulates wall seconds per step of one run."""

    def __init__(self):
        self.seconds = {}
        self.epochs: list[float] = []

    @contextmanager
    def step(self, name: str):
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - tick)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def epoch_log(self, log=None):
        """An ``epoch_log`` callback that keeps each epoch's seconds, then calls ``log``."""
        def record(facts: dict) -> None:
            self.epochs.append(facts["seconds"])
            if log is not None:
                log(facts)
        return record

    def facts(self) -> dict:
        """The record's ``provenance.timing``: seconds per step (ms resolution)."""
        out = {name: round(self.seconds[name], 3) for name in STEPS if name in self.seconds}
        out["train_epochs"] = [round(s, 3) for s in self.epochs]
        return out
