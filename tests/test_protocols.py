"""Protocols: exact effect of label noise, long tail, validation split and resolution;
no test-label leakage; determinism; protocol grids and leaderboard rows."""
import json
import sqlite3

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.store.sqlite import ResultStore
from benchmark.run.loop import TrainData
from benchmark.run.inputs import FrozenInputs
from benchmark.run.method_run import run_method
from benchmark.errors import BenchmarkError
from benchmark.features.cache import Features
from benchmark.method import HashMethod
from benchmark.grid.protocols import (Protocol, corrupt_labels, expand_grid, long_tail_counts,
                                      materialise)
from benchmark.eval.metrics import evaluate_codes, evaluate_retrieval
from tests.conftest import DATA_ROOT, needs_cub100, run_cli

C, TRAIN, TEST = 12, 20, 10
LABELS = np.repeat(np.arange(C), TRAIN + TEST)
IS_TRAIN = np.tile(np.arange(TRAIN + TEST) < TRAIN, C)


def split_of(seed=0, **protocol):
    return materialise(LABELS, IS_TRAIN, C, Protocol(**protocol), seed)


def test_symmetric_noise_flips_exactly_r_of_each_class_to_another_class():
    split = split_of(noise="symmetric:0.5")
    clean = LABELS[split.train_index]
    flipped = split.train_labels != clean
    for c in range(C):
        assert flipped[clean == c].sum() == TRAIN // 2
    assert split.facts["noise"]["realised_rate"] == 0.5
    # symmetric: targets spread over the other classes, never the true one
    targets = split.train_labels[flipped]
    assert len(np.unique(targets)) > C // 2
    assert split.query_index.tolist() == np.flatnonzero(~IS_TRAIN).tolist()


def test_pairflip_noise_goes_to_the_next_class():
    split = split_of(noise="pairflip:0.2")
    clean = LABELS[split.train_index]
    flipped = split.train_labels != clean
    assert np.bincount(clean[flipped], minlength=C).tolist() == [4] * C  # round(0.2 * 20)
    assert (split.train_labels[flipped] == (clean[flipped] + 1) % C).all()
    assert split.facts["noise"]["realised_rate"] == 0.2


def flips_per_class(index, noisy):
    clean = LABELS[index]
    return np.bincount(clean[noisy != clean], minlength=C).tolist()


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_noise_is_exact_in_train_and_validation_separately(kind):
    # per class: 5 validation, 15 train images; rate 0.5 flips round(7.5) = 8 and round(2.5) = 2
    split = split_of(noise=f"{kind}:0.5", val_frac=0.25)
    assert flips_per_class(split.train_index, split.train_labels) == [8] * C
    assert flips_per_class(split.val_index, split.val_labels) == [2] * C
    assert split.facts["noise"]["realised_rate"] == round(8 / 15, 6)
    assert split.facts["noise"]["realised_rate_val"] == 0.4
    for index, noisy in ((split.train_index, split.train_labels), (split.val_index, split.val_labels)):
        clean = LABELS[index]
        assert (noisy[noisy != clean] != clean[noisy != clean]).all()
        if kind == "pairflip":
            assert (noisy[noisy != clean] == (clean[noisy != clean] + 1) % C).all()


def test_noise_without_validation_draws_what_it_always_drew():
    """The content hashes of splits without --val-frac are those of the committed records'
    protocol code (a change in the draw order would change every noisy run)."""
    assert split_of(noise="symmetric:0.5").facts["hash"] == "bb101f924ef351b1"
    both = split_of(noise="pairflip:0.4", long_tail="exp:10")
    assert (both.facts["hash"], both.facts["noise"]["hash"]) == ("4c17943a7b8c8581", "e30d7fcb98b3da4f")
    assert "realised_rate_val" not in both.facts["noise"]


def test_steps_apply_in_order_validation_then_long_tail_then_noise():
    split = split_of(2, val_frac=0.25, long_tail="exp:10", noise="pairflip:0.4")
    # validation is carved from the full train split: 5 per class, untouched by the long tail
    assert np.bincount(LABELS[split.val_index], minlength=C).tolist() == [5] * C
    # the long tail acts on the 15 left per class
    counts = np.bincount(LABELS[split.train_index], minlength=C)
    assert sorted(counts.tolist(), reverse=True) == [round(15 * 10 ** (-r / (C - 1))) for r in range(C)]
    # noise is counted on the long-tailed train counts and on the validation counts
    assert flips_per_class(split.train_index, split.train_labels) == [round(0.4 * n) for n in counts]
    assert flips_per_class(split.val_index, split.val_labels) == [2] * C
    # val_rule "retrain": the reported run's database is the full training split (train + val)
    assert split.facts["counts"] == {"train": int(counts.sum()), "val": 5 * C,
                                     "query": TEST * C, "database": int(counts.sum()) + 5 * C,
                                     "retrain": int(counts.sum()) + 5 * C}


def test_noise_is_deterministic_in_the_seed_and_hashed():
    a, b, c = split_of(0, noise="symmetric:0.3"), split_of(0, noise="symmetric:0.3"), \
        split_of(1, noise="symmetric:0.3")
    assert (a.train_labels == b.train_labels).all() and a.facts == b.facts
    assert (a.train_labels != c.train_labels).any()
    assert a.facts["noise"]["hash"] != c.facts["noise"]["hash"]
    assert a.facts["hash"] != split_of(0).facts["hash"]


def test_rate_zero_and_rho_one_are_the_clean_protocol():
    assert Protocol(noise="symmetric:0", long_tail="exp:1").spec() == Protocol().spec()
    assert expand_grid("symmetric:0,0.2,pairflip:0.4", "--noise") == [
        "symmetric:0", "symmetric:0.2", "pairflip:0.4"]
    for bad in ("symmetric:1", "gaussian:0.2", "symmetric:x"):
        with pytest.raises(BenchmarkError, match="--noise"):
            Protocol(noise=bad).spec()
    with pytest.raises(BenchmarkError, match="RHO"):
        Protocol(long_tail="exp:0.5").spec()


def test_long_tail_follows_the_exponential_profile_in_a_seeded_class_order():
    rho = 10
    split = split_of(3, long_tail=f"exp:{rho}")
    counts = np.bincount(LABELS[split.train_index], minlength=C)
    ranked = np.sort(counts)[::-1]
    expected = [max(1, round(TRAIN * rho ** (-r / (C - 1)))) for r in range(C)]
    assert ranked.tolist() == expected
    assert counts.max() / counts.min() == rho
    summary = split.facts["long_tail"]
    assert summary["max"] == TRAIN and summary["min"] == 2 and summary["images"] == counts.sum()
    # the database is the subsampled train split; queries stay balanced
    assert split.db_index.tolist() == split.train_index.tolist()
    assert np.bincount(LABELS[split.query_index]).tolist() == [TEST] * C
    # another seed: another class order, same profile
    other = np.bincount(LABELS[split_of(4, long_tail="exp:10").train_index], minlength=C)
    assert sorted(other) == sorted(counts) and other.tolist() != counts.tolist()


def test_long_tail_counts_formula():
    counts = long_tail_counts(np.array([100, 100, 100]), 4.0, order=np.array([2, 0, 1]))
    assert counts.tolist() == [50, 25, 100]


def test_validation_split_is_per_class_and_disjoint():
    split = split_of(noise="symmetric:0.5", val_frac=0.25)
    assert np.bincount(LABELS[split.val_index]).tolist() == [TRAIN // 4] * C
    assert np.bincount(LABELS[split.train_index]).tolist() == [TRAIN - TRAIN // 4] * C
    assert not np.intersect1d(split.val_index, split.train_index).size
    assert not np.intersect1d(split.val_index, split.query_index).size
    assert IS_TRAIN[split.val_index].all()


def test_macro_map_averages_per_class():
    rng = np.random.default_rng(0)
    q, d = rng.integers(0, 2, (30, 16), dtype=np.uint8), rng.integers(0, 2, (50, 16), dtype=np.uint8)
    ql, dl = rng.integers(0, 3, 30), rng.integers(0, 3, 50)
    # independent per-query AP: stable sort by (distance, index)
    dist = (q[:, None, :] != d[None, :, :]).sum(-1)
    relevant = dl[np.argsort(dist, axis=1, kind="stable")] == ql[:, None]
    hits = np.cumsum(relevant, axis=1)
    ap = (hits / np.arange(1, 51) * relevant).sum(1) / np.maximum(hits[:, -1], 1)
    assert ap == pytest.approx(evaluate_retrieval(q, d, ql, dl).per_query_ap)
    assert ap.mean() == pytest.approx(evaluate_codes(q, d, ql, dl)["map"])
    assert evaluate_codes(q, d, ql, dl)["macro_map"] == pytest.approx(np.mean([ap[ql == c].mean() for c in range(3)]))


class Spy(HashMethod):
    """Records what the harness hands it (inputs, labels, resolutions)."""
    name = "spy"
    train_resolutions = (1, 2)
    train_config = {"epochs": 2, "batch_size": 16,
                    "optimizer": {"type": "SGD", "lr": 0.0}}
    seen: list = []

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.proj = torch.nn.Linear(input_shapes["pooled"][0], bits)

    def loss(self, batch):
        Spy.seen.append({k: v.clone() for k, v in batch["inputs"].items()}
                        | {"labels": batch["labels"], "indices": batch["indices"],
                           "resolution": batch["resolution"]})
        return {"zero": self.proj(batch["inputs"]["pooled"]).sum() * 0}

    def encode(self, inputs):
        return self.proj(inputs["pooled"])


def fake_features(offset: float) -> Features:
    """Column 0 = image index, column 1 = which feature set (the downsampling factor)."""
    pooled = np.zeros((len(LABELS), 4), dtype=np.float16)
    pooled[:, 0], pooled[:, 1] = np.arange(len(LABELS)), offset
    return Features({"pooled": pooled}, path=None)


def test_methods_get_only_noisy_train_labels_and_per_sample_resolutions():
    split = split_of(noise="symmetric:0.5")
    Spy.seen = []
    full, half = fake_features(1), fake_features(2)
    run_method(Spy, {}, FrozenInputs(Spy, split, {1: full, 2: half}), LABELS, C, 8, seed=0)
    ratios = []
    for batch in Spy.seen:
        index = batch["indices"].numpy()
        # labels are the noisy training labels of exactly those training samples
        assert (batch["labels"].numpy() == split.train_labels[index]).all()
        assert (batch["pooled"][:, 0].numpy() == split.train_index[index]).all()  # train images only
        offset, r = batch["pooled"][:, 1].numpy(), batch["resolution"].numpy()
        assert ((offset == 2) == (r == 0.5)).all() and ((offset == 1) == (r == 1)).all()
        ratios.extend(r.tolist())
    assert set(ratios) == {1.0, 0.5} and len(ratios) == 2 * len(split.train_index)


def test_train_data_without_resolutions_is_unchanged():
    data = TrainData({"x": torch.arange(10.0)[:, None]}, torch.arange(10), 4)
    batches = list(data.batches(torch.Generator().manual_seed(0)))
    assert all("resolution" not in b for b in batches)
    assert torch.cat([b["indices"] for b in batches]).tolist() == \
        torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()


TINY = ["--dataset", "synthetic-fg", "--max-classes", "6", "--input-size", "32", "--epochs", "1",
        "--no-progress"]


def load_runs(out):
    with sqlite3.connect(out / "results.sqlite") as db:
        return [(r[0], json.loads(r[1]), json.loads(r[2]), json.loads(r[3])) for r in
                db.execute("SELECT run_id, protocol, metrics, spec FROM runs WHERE status='ok'")]


def test_grid_runs_every_protocol_value_deterministically(tmp_path, cache_dir):
    args = ["run", "--methods", "dsh", *TINY, "--bits", "16", "--noise", "symmetric:0,0.5",
            "--cache-dir", cache_dir]
    first = run_cli(*args, "--out", tmp_path / "a")
    second = run_cli(*args, "--out", tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    runs = load_runs(tmp_path / "a")
    assert sorted(str(p["noise"]) for _, p, _, _ in runs) == ["None", "symmetric:0.5"]
    for run_id, protocol, metrics, _ in runs:
        assert "macro_map" in metrics
        a = np.load(tmp_path / "a" / "runs" / run_id / "codes.npz")
        b = np.load(tmp_path / "b" / "runs" / run_id / "codes.npz")
        if protocol["noise"]:  # the database is the train split, with its clean labels
            counts = np.bincount(a["db_labels"])
            assert protocol["materialised"]["noise"]["realised_rate"] == \
                round(np.round(0.5 * counts).sum() / counts.sum(), 6)
        for key in a.files:  # byte-identical codes for the same spec
            assert a[key].tobytes() == b[key].tobytes()
    from benchmark.report.tables import render_all
    with ResultStore(tmp_path / "a" / "results.sqlite") as store:
        text, = render_all(store.records()).values()
    assert "| clean | dsh |" in text and "| noise=symmetric:0.5 | dsh |" in text, text


def test_resolution_protocol_encodes_queries_from_downsampled_images(tmp_path, cache_dir):
    out = tmp_path / "r"
    result = run_cli("run", "--methods", "itq", *TINY, "--bits", "16", "--resolution", "1,4",
                     "--long-tail", "exp:5", "--val-frac", "0.2", "--out", out,
                     "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    runs = {p["resolution"]: (rid, p) for rid, p, _, _ in load_runs(out)}
    assert set(runs) == {1, 4}
    codes = {r: np.load(out / "runs" / rid / "codes.npz") for r, (rid, _) in runs.items()}
    # same database (full size, same long-tailed split), different query codes
    assert (codes[1]["db_codes"] == codes[4]["db_codes"]).all()
    assert (codes[1]["query_codes"] != codes[4]["query_codes"]).any()
    # 16 train images left per class after validation: rounding gives 16/3 for rho = 5
    assert runs[4][1]["materialised"]["long_tail"]["realised_ratio"] == pytest.approx(5, abs=0.5)


def test_bad_protocol_flags_are_one_line_errors(tmp_path, capsys):
    for args, message in ((["--noise", "symmetric:1.5"], "rate must be in [0, 1)"),
                          (["--long-tail", "pow:3"], "expected exp:RHO"),
                          (["--resolution", "0.5"], "must be >= 1"),
                          (["--val-frac", "1"], "--val-frac")):
        code = main(["run", "--methods", "lsh", *TINY, "--out", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1


@needs_cub100
def test_cub100_protocols_on_real_labels():
    ds = build_dataset("cub100", data_root=DATA_ROOT)
    split = materialise(ds.labels, ds.is_train, ds.num_classes,
                        Protocol(noise="pairflip:0.4", long_tail="exp:10", val_frac=0.1), 0)
    counts = np.bincount(ds.labels[split.train_index], minlength=ds.num_classes)
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.15)
    assert np.bincount(ds.labels[split.query_index]).tolist() == \
        np.bincount(ds.labels[~ds.is_train]).tolist()
    clean, val_clean = ds.labels[split.train_index], ds.labels[split.val_index]
    for index, noisy, kept in ((split.train_index, split.train_labels, clean),
                               (split.val_index, split.val_labels, val_clean)):
        flipped = noisy != ds.labels[index]
        assert (np.bincount(kept[flipped], minlength=ds.num_classes) ==
                np.round(0.4 * np.bincount(kept, minlength=ds.num_classes))).all()
    assert not (set(split.train_index) | set(split.val_index)) & set(np.flatnonzero(~ds.is_train))


@needs_cub100
def test_cub100_dsh_noise_lowers_map(tmp_path, cache_dir):
    """First 10 species at 128 px (the feature cache the CLI test fills)."""
    out = tmp_path / "results"
    result = run_cli("run", "--methods", "dsh", "--dataset", "cub100", "--data-root", DATA_ROOT,
                     "--max-classes", "10", "--input-size", "128", "--bits", "32",
                     "--noise", "symmetric:0,0.5", "--out", out, "--cache-dir", cache_dir,
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    found = {p["noise"]: m["map"] for _, p, m, _ in load_runs(out)}
    assert found[None] > found["symmetric:0.5"], found


def test_real_valued_features_are_evaluated_and_timed_beside_the_codes(tmp_path, cache_dir):
    out = tmp_path / "real"
    result = run_cli("run", "--methods", "thesis-sld,csq", *TINY, "--bits", "16", "--out", out,
                     "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    with ResultStore(out / "results.sqlite") as store:
        records = {r["method"]: r for r in store.records()}
    sld, csq = records["thesis-sld"], records["csq"]
    assert 0 < sld["metrics"]["map_real"] <= 1 and "map_real" not in csq["metrics"]
    assert sld["efficiency"]["real_dim"] == 1024  # thesis-sld's hidden embedding
    assert sld["efficiency"]["real_search_latency_ms"] > 0
    assert sld["provenance"]["load_average"] >= 0  # the load while its timings were taken
    from benchmark.report.tables import render_all
    text, = render_all(list(records.values())).values()
    row = next(line for line in text.splitlines() if line.startswith("| clean | thesis-sld"))
    assert f"{100 * sld['metrics']['map_real']:.2f} (1024-d, 16b)" in row
    assert "Float / Hamming search time" in text
    csq_row = next(line for line in text.splitlines() if line.startswith("| clean | csq"))
    assert csq_row.count(" - |") >= 2  # no real-valued feature: both cells empty
