"""The method contract's optional hooks through the harness's own run path (``run_method``
on the conformance probe data): the database hook (asymmetric codes), the per-epoch
sampler, unsupervised batches, encode leaving the model unchanged, and a broken plugin
named beside working ones."""
import json
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.conformance.hooks import check_database_hook
from benchmark.conformance.probe import (PROBE_CLASSES, PROBE_IS_TRAIN, PROBE_LABELS, ConformanceError,
                                         ProbeFeatures, probe_features)
from benchmark.errors import BenchmarkError
from benchmark.eval.metrics import binarise, evaluate_codes
from benchmark.grid.protocols import Protocol, materialise
from benchmark.method import HashMethod
from benchmark.run.inputs import FrozenInputs
from benchmark.run.loop import TrainData
from benchmark.run.method_run import run_method
from plugins.adsh import ADSH, ADSHNetworkDB
from tests.conftest import make_plugin_dist, run_cli

BITS = 12
CONFIG = {"epochs": 2, "batch_size": 8, "optimizer": {"type": "SGD", "lr": 0.01}}


class Plain(HashMethod):
    """A linear head; records what its hooks receive."""
    name = "plain"
    train_config = CONFIG

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = nn.Linear(input_shapes["pooled"][0], bits)
        self.seen, self.epoch_data = [], []

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def on_epoch_start(self, epoch, data):
        self.epoch_data.append(data)

    def loss(self, batch):
        self.seen.append(batch)
        return {"l2": 1e-3 * self.encode(batch["inputs"]).pow(2).mean()}  # keeps codes diverse


class Lookup(Plain):
    """Asymmetric: the database code of a training sample is a +-1 code of its label."""
    name = "lookup-db"

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.register_buffer("table", torch.zeros(0, bits))
        self.asked = []

    def on_epoch_start(self, epoch, data):
        self.table = nn.functional.one_hot(data.labels, self.bits).float() * 2 - 1

    def encode_database(self, inputs, indices):
        self.asked.append(indices.clone())
        return self.table[indices]


class WrongShape(Lookup):
    name = "wrong-shape-db"

    def encode_database(self, inputs, indices):
        return self.table[indices][:, :-1]


class Meddling(Lookup):
    name = "meddling-db"

    def encode_database(self, inputs, indices):
        self.table.mul_(-1)
        return -self.table[indices]


class Sampled(Plain):
    """Epoch e covers positions e, e+2, e+4, ... only."""
    name = "sampled"

    def epoch_indices(self, epoch, num_train, generator):
        return torch.arange(epoch % 2, num_train, 2)


class OutOfRange(Plain):
    name = "out-of-range"

    def epoch_indices(self, epoch, num_train, generator):
        return torch.tensor([0, num_train])


class Unsupervised(Plain):
    name = "unsupervised-probe"
    supervised = False


class Counting(Plain):
    """Breaks the contract: encode changes a buffer."""
    name = "counting"

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.register_buffer("calls", torch.zeros(()))

    def encode(self, inputs):
        self.calls += 1
        return super().encode(inputs)


def probe_source(cls, protocol=Protocol()):
    split = materialise(PROBE_LABELS, PROBE_IS_TRAIN, PROBE_CLASSES, protocol, 0)
    by_factor = {1: probe_features(), 2: ProbeFeatures(PROBE_LABELS, noise=1.0)}
    return FrozenInputs(cls, split, by_factor, protocol.resolution, protocol.resolution_db)


def run(cls, protocol=Protocol(), epochs=2):
    return run_method(cls, {}, probe_source(cls, protocol), PROBE_LABELS, PROBE_CLASSES, BITS,
                      seed=0, epochs=epochs)


# -- the database hook -------------------------------------------------------------------------

def test_database_codes_come_from_the_hook_and_queries_from_encode():
    result = run(Lookup)
    method, codes = result["method"], result["codes"]
    source = probe_source(Lookup)
    n_train = len(source.split.train_index)
    assert result["asymmetric"] is True
    assert np.array_equal(codes["db_codes"], binarise(method.table))  # every training row
    queries, _ = source.inputs("query")
    with torch.no_grad():
        assert np.array_equal(codes["query_codes"], binarise(method.encode(queries)))
    asked = torch.cat(method.asked)  # only training positions, each once
    assert torch.equal(asked, torch.arange(n_train))


def test_validation_selection_scores_with_the_hook_too():
    result = run(Lookup, Protocol(val_frac=0.25), epochs=2)
    assert result["selection"]["rule"] == "best_val_map"
    assert len(result["method"].asked) == 2  # each epoch's validation scores against the hook
    # the selection run's database (the full training split, validation included) is not
    # its training set: encoded (the reported run, retrained on all of it, uses the hook)
    assert result["asymmetric"] is False
    source, method = probe_source(Lookup, Protocol(val_frac=0.25)), result["method"]
    val, _ = source.inputs("val")
    train, _ = source.inputs("train")
    with torch.no_grad():  # the restored (best) state scores as recorded: against the table
        queries = binarise(method.encode(val))
        scores = [evaluate_codes(queries, db, source.split.val_labels, source.split.train_labels)["map"]
                  for db in (binarise(method.table), binarise(method.encode(train)))]
    assert result["selection"]["best_val_map"] == round(scores[0], 6) != round(scores[1], 6)


def test_downsampled_database_images_are_encoded_not_looked_up():
    result = run(Lookup, Protocol(resolution_db=2))
    assert result["asymmetric"] is False and result["method"].asked == []
    db, _ = probe_source(Lookup, Protocol(resolution_db=2)).inputs("db")
    with torch.no_grad():
        assert np.array_equal(result["codes"]["db_codes"], binarise(result["method"].encode(db)))


def test_symmetric_methods_are_unchanged():
    result = run(Plain)
    assert result["asymmetric"] is False
    db, _ = probe_source(Plain).inputs("db")
    with torch.no_grad():
        assert np.array_equal(result["codes"]["db_codes"], binarise(result["method"].encode(db)))


def test_adsh_learned_and_network_database_share_the_query_network():
    learned, network = (run_method(cls, {"num_samples": 20, "inner_epochs": 2},
                                   probe_source(cls), PROBE_LABELS, PROBE_CLASSES, BITS, seed=0,
                                   epochs=4) for cls in (ADSH, ADSHNetworkDB))
    assert learned["asymmetric"] is True and network["asymmetric"] is False
    assert np.array_equal(learned["codes"]["query_codes"], network["codes"]["query_codes"])
    assert np.array_equal(learned["codes"]["db_codes"], binarise(learned["method"].codes))


def test_conformance_checks_the_database_hook():
    assert "query encoding unaffected" in check_database_hook(Lookup)
    assert check_database_hook(Plain) == "none (optional)"
    with pytest.raises(ConformanceError, match=r"encode_database returned shape \(32, 11\), "
                                               r"expected \(32, 12\)"):
        check_database_hook(WrongShape)
    with pytest.raises(ConformanceError, match="changed the model"):
        check_database_hook(Meddling)


# -- the sampler hook and unsupervised batches --------------------------------------------------

def test_an_epoch_covers_only_the_sampled_positions_shuffled():
    method = run(Sampled, epochs=2)["method"]
    n = int(PROBE_IS_TRAIN.sum())
    for epoch, (start, stop) in enumerate(((0, 2), (2, 4))):  # 16 positions, batches of 8
        seen = torch.cat([b["indices"] for b in method.seen[start:stop]])
        assert sorted(seen.tolist()) == list(range(epoch % 2, n, 2))
    assert len(method.seen) == 4
    # shuffled with the harness generator: not in the order given
    assert method.seen[0]["indices"].tolist() != list(range(0, 16, 2))


def test_without_the_hook_the_order_is_what_it_always_was():
    method = run(Plain, epochs=2)["method"]
    generator = torch.Generator().manual_seed(0)
    n = int(PROBE_IS_TRAIN.sum())
    expected = torch.cat([torch.randperm(n, generator=generator) for _ in range(2)])
    assert torch.equal(torch.cat([b["indices"] for b in method.seen]), expected)
    data = TrainData({"pooled": torch.zeros(5, 2)}, torch.arange(5), 2)
    assert [b["indices"].tolist() for b in data.batches()] == [[0, 1], [2, 3]]


def test_epoch_indices_out_of_range_fail_the_run():
    with pytest.raises(BenchmarkError, match=r"epoch_indices\(0\) must give .* in 0\.\.31"):
        run(OutOfRange)


def test_unsupervised_methods_see_no_labels():
    method = run(Unsupervised)["method"]
    assert method.seen and all("labels" not in b and "indices" in b for b in method.seen)
    assert method.epoch_data and all(d.labels is None for d in method.epoch_data)
    assert all("labels" in b for b in run(Plain)["method"].seen)


# -- encode must not change the model ----------------------------------------------------------

def test_encode_that_changes_the_model_fails_the_run():
    with pytest.raises(BenchmarkError, match=r"method 'counting': encoding changed the model "
                                             r"\(calls\); "):
        run(Counting)


# -- a broken plugin beside working methods ----------------------------------------------------

def test_a_broken_plugin_fails_its_runs_and_the_rest_run(tmp_path, cache_dir):
    site = make_plugin_dist(tmp_path / "site", "broken-plugin", "broken", "broken_plugin",
                            "raise ImportError('needs a package that is not installed')\n", "0.3")
    out = tmp_path / "out"
    result = run_cli("run", "--methods", "broken,dsh,adsh,adsh-netdb", "--dataset", "synthetic-fg",
                     "--input-size", "64", "--epochs", "3", "--bits", "8,16", "--no-progress",
                     "--out", out, "--cache-dir", cache_dir, env={"PYTHONPATH": str(site)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT method, bits, status, error, distribution, provenance FROM runs "
                          "ORDER BY method, bits").fetchall()
    error = "plugin 'broken' failed to load: ImportError: needs a package that is not installed"
    assert [r[:5] for r in rows if r[0] == "broken"] == [("broken", 8, "failed", error, "broken-plugin"),
                                                         ("broken", 16, "failed", error, "broken-plugin")]
    others = [r for r in rows if r[0] != "broken"]
    assert len(others) == 6 and all(r[2] == "ok" for r in others)
    asymmetric = {r[0]: json.loads(r[5]).get("asymmetric") for r in others}
    assert asymmetric == {"adsh": True, "adsh-netdb": None, "dsh": None}
    assert "6 runs ok, 2 failed" in result.stdout
