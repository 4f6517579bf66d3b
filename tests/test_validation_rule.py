"""val_rule "retrain": the epoch is chosen on the validation split, then the reported run is
retrained on the full training split for that many epochs, so its database is the full
training split (comparable with runs without validation) and its protocol row is its own."""
import json
import sqlite3

import numpy as np

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.grid.protocols import protocol_label

QUICK = ["--dataset", "synthetic-fg", "--input-size", "32", "--bits", "8", "--no-progress"]


def runs_of(out) -> dict:
    with sqlite3.connect(out / "results.sqlite") as db:
        return {r[0]: (r[1], *(json.loads(v) for v in r[2:])) for r in
                db.execute("SELECT method, run_id, protocol, provenance FROM runs WHERE status='ok'")}


def test_reported_run_is_retrained_on_the_full_training_split(tmp_path, cache_dir):
    selected = tmp_path / "selected"
    assert main(["run", "--methods", "dsh,lsh", *QUICK, "--epochs", "4", "--val-frac", "0.25",
                 "--cache-dir", str(cache_dir), "--out", str(selected)]) == 0
    runs = runs_of(selected)
    run_id, protocol, provenance = runs["dsh"]
    selection = provenance["selection"]
    assert selection["rule"] == "best_val_map_then_retrain" and len(selection["val_map"]) == 4
    epoch = selection["epoch"]
    assert selection["val_map"][epoch - 1] == max(selection["val_map"])
    assert provenance["epochs"] == epoch == len(provenance["loss_history"])
    assert protocol_label(protocol) == "val_frac=0.25, val_rule=retrain"  # its own protocol row
    train_images = np.flatnonzero(build_dataset("synthetic-fg").is_train)
    assert protocol["materialised"]["counts"]["database"] == len(train_images) == 480
    for method in ("dsh", "lsh"):  # closed-form methods fit the full training split too
        codes = np.load(selected / "runs" / runs[method][0] / "codes.npz")
        assert len(codes["db_codes"]) == len(train_images)
    # the retrained model is exactly a clean run of the selected number of epochs
    clean = tmp_path / "clean"
    assert main(["run", "--methods", "dsh", *QUICK, "--epochs", str(epoch),
                 "--cache-dir", str(cache_dir), "--out", str(clean)]) == 0
    a = np.load(selected / "runs" / run_id / "codes.npz")
    b = np.load(clean / "runs" / runs_of(clean)["dsh"][0] / "codes.npz")
    for key in ("query_codes", "db_codes", "db_labels"):
        assert np.array_equal(a[key], b[key]), key
