"""A finetune run killed (SIGKILL) after epoch 1 of 3 resumes from its checkpoint when the
grid is run again and ends with exactly the codes of an uninterrupted run; the number of
image-loading workers does not change them either. Checkpoints go with the record unless
``--keep-checkpoints``."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import torch

from tests.conftest import make_plugin_dist, run_cli

KILLER = '''
import os
import signal
from pathlib import Path

from plugins.dsh import DSH
from registry import hookimpl


class Killer(DSH):
    """DSH that kills its own process at the start of epoch 2 while $KILL_MARKER exists
    (removing it first, so the run goes through when the grid is run again)."""
    name = "killer"

    def on_epoch_start(self, epoch, data):
        marker = os.environ.get("KILL_MARKER")
        if epoch == 1 and marker and Path(marker).exists():
            Path(marker).unlink()
            os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def register_methods(register):
    register(Killer)
'''


def _grid(out, env, workers, *extra):
    return run_cli("run", "--methods", "killer", "--dataset", "synthetic-fg", "--max-classes", "3",
                   "--regime", "finetune", "--backbone", "resnet18", "--backbone-weights", "none",
                   "--input-size", "32",
                   "--bits", "8", "--epochs", "3", "--val-frac", "0.25", "--device", "cpu",
                   "--workers", str(workers), "--out", out, "--no-progress", *extra, env=env)


def _stored(out) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute("SELECT run_id, status, provenance FROM runs").fetchall()


def test_killed_finetune_run_resumes_to_the_same_codes(tmp_path):
    site = make_plugin_dist(tmp_path / "site", "killer-plugin", "killer", "killer_plugin", KILLER)
    marker = tmp_path / "kill-once"
    env = {"PYTHONPATH": str(site), "BENCHMARK_PLUGINS": "killer", "KILL_MARKER": str(marker)}

    whole = _grid(tmp_path / "whole", env, 0, "--keep-checkpoints")
    assert whole.returncode == 0, whole.stderr
    kept = {p.stem: p for p in (tmp_path / "whole" / "checkpoints").glob("*.pt")}
    main = next(p for name, p in kept.items() if "-" not in name)  # not the val_rule retrain's
    assert torch.load(main, weights_only=True)["epochs_done"] == 3

    marker.touch()
    killed = _grid(tmp_path / "cut", env, 2)
    assert killed.returncode == -9, killed.stderr
    assert not marker.exists() and len(list((tmp_path / "cut" / "checkpoints").glob("*.pt"))) == 1
    assert not [r for r in _stored(tmp_path / "cut") if r[1] == "ok"]

    resumed = _grid(tmp_path / "cut", env, 2)
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1" in resumed.stdout  # the selection phase (val_rule retrain) resumed
    (run_id, status, provenance), = _stored(tmp_path / "cut")
    (whole_id, _, whole_provenance), = _stored(tmp_path / "whole")
    assert (run_id, status) == (whole_id, "ok")
    assert json.loads(provenance)["selection"] == json.loads(whole_provenance)["selection"]
    assert not list((tmp_path / "cut" / "checkpoints").glob("*"))  # removed with the record
    a = np.load(tmp_path / "whole" / "runs" / run_id / "codes.npz")
    b = np.load(tmp_path / "cut" / "runs" / run_id / "codes.npz")
    for key in ("query_codes", "db_codes"):
        assert a[key].tobytes() == b[key].tobytes(), key
