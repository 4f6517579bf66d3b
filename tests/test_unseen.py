"""Unseen-class protocol: exact class sets, exact query/database membership of the four
settings, noise only among seen classes, one record per setting (hand-made fixture and
synthetic-fg)."""
import json
import sqlite3

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.grid.protocols import Protocol, materialise, protocol_label
from benchmark.grid.request import GridRequest
from benchmark.grid.unseen import SETTINGS, choose_unseen

# 5 classes; per class 4 training images then 2 test images: image i has class i // 6
C, TRAIN, TEST = 5, 4, 2
LABELS = np.repeat(np.arange(C), TRAIN + TEST)
IS_TRAIN = np.tile(np.arange(TRAIN + TEST) < TRAIN, C)


def split_of(setting, fraction=0.4, seed=0, **protocol):
    return materialise(LABELS, IS_TRAIN, C, Protocol(unseen_classes=fraction, unseen_eval=setting,
                                                     **protocol), seed)


def images(classes, train):
    """The fixture's images of ``classes`` in the train (True) or test (False) split."""
    return sorted(i for i in range(len(LABELS)) if LABELS[i] in classes and IS_TRAIN[i] == train)


def test_unseen_classes_are_a_seeded_share_of_the_classes():
    unseen = choose_unseen(LABELS, 0.4, np.random.default_rng([0, 4]))
    assert len(unseen) == round(0.4 * C) == 2 and list(unseen) == sorted(unseen)
    assert set(unseen) < set(range(C))
    assert len(choose_unseen(LABELS, 0.01, np.random.default_rng(0))) == 1  # at least one
    assert len(choose_unseen(LABELS, 0.99, np.random.default_rng(0))) == C - 1  # one seen left


@pytest.mark.parametrize("setting", SETTINGS)
def test_each_setting_restricts_queries_and_database_exactly(setting):
    split = split_of(setting)
    unseen = split.facts["unseen"]["classes"]
    seen = sorted(set(range(C)) - set(unseen))
    assert len(unseen) == 2 and split.facts["unseen"]["eval"] == setting
    # training never sees an unseen class
    assert split.train_index.tolist() == images(seen, True)
    assert set(split.train_labels.tolist()) == set(seen)
    query_side, db_side = setting.split("@")
    expected_query = images(seen if query_side == "seen" else unseen, False)
    expected_db = images({"seen": seen, "unseen": unseen, "all": range(C)}[db_side], True)
    assert split.query_index.tolist() == expected_query
    assert split.db_index.tolist() == expected_db
    assert split.facts["counts"]["query"] == len(expected_query)


def test_settings_share_training_and_unseen_classes_but_not_their_hash():
    splits = [split_of(s) for s in SETTINGS]
    assert len({tuple(s.facts["unseen"]["classes"]) for s in splits}) == 1
    assert len({s.facts["unseen"]["hash"] for s in splits}) == 1
    assert all(np.array_equal(s.train_index, splits[0].train_index) for s in splits)
    assert len({s.facts["hash"] for s in splits}) == 4
    assert split_of("seen@all").facts == split_of("seen@all").facts  # deterministic in the seed
    draws = {tuple(split_of("seen@all", seed=s).facts["unseen"]["classes"]) for s in range(8)}
    assert len(draws) > 1  # and seeded: other seeds hold out other classes


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_noise_flips_only_to_seen_classes(kind):
    split = split_of("seen@all", noise=f"{kind}:0.5")
    unseen = set(split.facts["unseen"]["classes"])
    seen = sorted(set(range(C)) - unseen)
    clean = LABELS[split.train_index]
    flipped = split.train_labels != clean
    assert flipped.sum() == 2 * len(seen)  # round(0.5 * 4) per seen class
    assert not set(split.train_labels.tolist()) & unseen
    assert (split.train_labels[flipped] != clean[flipped]).all()
    if kind == "pairflip":  # the next *seen* class, cyclically
        following = {c: seen[(seen.index(c) + 1) % len(seen)] for c in seen}
        assert [following[c] for c in clean[flipped]] == split.train_labels[flipped].tolist()


def test_validation_is_carved_from_seen_classes_and_the_database_is_the_full_training_split():
    split = split_of("seen@seen", val_frac=0.25)
    seen = sorted(set(range(C)) - set(split.facts["unseen"]["classes"]))
    assert set(LABELS[split.val_index].tolist()) == set(seen)
    assert split.db_index.tolist() == images(seen, True)  # train + validation
    assert split.full_training().train_index.tolist() == images(seen, True)


def test_spec_label_and_grid():
    spec = Protocol(unseen_classes=0.25, unseen_eval="unseen@all").spec()
    assert spec["unseen_classes"] == 0.25 and spec["unseen_eval"] == "unseen@all"
    assert protocol_label(spec) == "unseen_classes=0.25, unseen_eval=unseen@all"
    assert "unseen_classes" not in Protocol().spec()  # clean run ids are unchanged
    request = GridRequest(methods=["lsh"], unseen_classes=[0.0, 0.25])
    assert [p.unseen_eval for p in request.protocols()] == [None, *SETTINGS]
    for bad in ({"unseen_classes": 1.0, "unseen_eval": "seen@all"},
                {"unseen_classes": 0.2, "unseen_eval": "seen@none"},
                {"unseen_classes": 0.0, "unseen_eval": "seen@all"}):
        with pytest.raises(BenchmarkError):
            Protocol(**bad)


def test_synthetic_fg_run_gives_one_record_per_setting(tmp_path, cache_dir):
    out = tmp_path / "unseen"
    assert main(["run", "--methods", "lsh", "--dataset", "synthetic-fg", "--input-size", "32",
                 "--bits", "8", "--unseen-classes", "0.25", "--cache-dir", str(cache_dir),
                 "--out", str(out), "--no-progress"]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = [(r[0], json.loads(r[1])) for r in db.execute("SELECT run_id, protocol FROM runs")]
    assert sorted(p["unseen_eval"] for _, p in rows) == sorted(SETTINGS)
    classes = {tuple(p["materialised"]["unseen"]["classes"]) for _, p in rows}
    assert len(classes) == 1 and len(next(iter(classes))) == 6  # round(0.25 * 24)
    unseen = set(next(iter(classes)))
    for run_id, protocol in rows:
        codes = np.load(out / "runs" / run_id / "codes.npz")
        query_side, db_side = protocol["unseen_eval"].split("@")
        assert set(codes["query_labels"].tolist()) <= unseen if query_side == "unseen" \
            else not set(codes["query_labels"].tolist()) & unseen
        db = set(codes["db_labels"].tolist())
        assert {"all": len(db) == 24, "seen": not db & unseen, "unseen": db == unseen}[db_side]
        assert len(codes["db_codes"]) == protocol["materialised"]["counts"]["database"]
