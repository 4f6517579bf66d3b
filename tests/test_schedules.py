"""Learning-rate schedules: the lr of every epoch equals the hand-computed schedule in both
regimes (the method's optimiser and the finetune backbone's), records carry the schedule,
checkpoints resume it exactly, CMBH's finetune recipe is the paper's step schedule."""
import json
import sqlite3

import pytest
import torch

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.errors import BenchmarkError
from benchmark.grid.config import MethodSettings, resolve
from benchmark.grid.protocols import Protocol, materialise
from benchmark.grid.runs import regime_settings
from benchmark.run.checkpoint import Checkpoint
from benchmark.run.inputs import FinetuneInputs
from benchmark.run.loop import TrainData, train
from benchmark.run.method_run import run_method
from benchmark.run.schedule import canonical
from registry import load_plugins
from tests.test_conformance import Linear  # a well-behaved trainable method


class WithBackbone(TrainData):
    """Frozen training data plus a second optimiser, as the finetune backbone's is."""

    def optimizers(self):
        return [torch.optim.SGD(self.extra.parameters(), lr=0.01)]


def data(n=8):
    torch.manual_seed(0)
    out = WithBackbone({"pooled": torch.randn(n, 6)}, torch.arange(n) % 2, batch_size=4)
    out.extra = torch.nn.Linear(2, 2)
    return out


# lr 0.1, "step:2:0.5+warmup:3:0.4", 2 steps per epoch. Warm-up: step i (0-based) uses
# 0.4 + 0.6 min(i, 3) / 3 = 0.4, 0.6, 0.8, 1, ... of the lr; the step part halves it after
# epochs 2 and 4. The first step of epoch e is step 2e: epoch 0 -> 0.1 * 0.4, epoch 1 ->
# 0.1 * 0.8, epoch 2 -> 0.1 * 0.5, epoch 3 -> 0.05, epoch 4 -> 0.025.
EXPECTED = [0.04, 0.08, 0.05, 0.05, 0.025]


def test_frozen_epochs_follow_the_hand_computed_schedule_on_every_optimiser():
    method, logged = Linear(8, 2, {"pooled": (6,)}), []
    stats = {}
    train(method, data(), 5, 0, {"type": "SGD", "lr": 0.1}, epoch_log=logged.append,
          stats=stats, schedule=("step:2:0.5+warmup:3:0.4", 5))
    assert [f["lr"][0] for f in logged] == pytest.approx(EXPECTED)
    assert [f["lr"][1] for f in logged] == pytest.approx([v / 10 for v in EXPECTED])  # the backbone's
    assert stats["lr"] == pytest.approx(EXPECTED)


def test_cosine_schedule_over_the_configured_epochs():
    method, logged = Linear(8, 2, {"pooled": (6,)}), []
    train(method, data(), 3, 0, {"type": "SGD", "lr": 0.1}, epoch_log=logged.append,
          schedule=("cosine:0.02", 4))  # stops after 3 of 4 configured epochs
    cosine = [0.02 + 0.08 * (1 + c) / 2 for c in (1, 2 ** -0.5, 0)]  # cos(pi e / 4), e = 0, 1, 2
    assert [f["lr"][0] for f in logged] == pytest.approx(cosine)


def test_finetune_backbone_and_method_follow_the_same_schedule():
    ds = build_dataset("synthetic-fg", num_classes=4, train_per_class=4, test_per_class=2,
                       image_size=32)
    split = materialise(ds.labels, ds.is_train, ds.num_classes, Protocol(), seed=0)
    spec = {"input_size": 32, "seed": 0, "backbone": "resnet18", "bits": 8,
            "protocol": Protocol().spec()}
    request = type("Request", (), {"backbone_weights": "none", "on_bad_image": "fail"})()
    source = FinetuneInputs(Linear, split, ds, spec, request)  # 16 images: 2 steps of 8
    config = {"epochs": 5, "batch_size": 8, "optimizer": {"type": "SGD", "lr": 0.01},
              "schedule": "step:2:0.5+warmup:3:0.4"}
    logged = []
    result = run_method(Linear, {}, source, ds.labels, ds.num_classes, 8, seed=0,
                        epoch_log=logged.append, train=config, encode=False)
    assert [f["lr"][0] for f in logged] == pytest.approx([v / 10 for v in EXPECTED])
    assert [f["lr"][1] for f in logged] == pytest.approx([v / 100 for v in EXPECTED])  # 1e-3 base
    assert result["lr"] == pytest.approx([v / 10 for v in EXPECTED])


def test_a_resumed_run_continues_the_schedule_exactly(tmp_path):
    text, path = ("multistep:1/3:0.5+warmup:2", 4), tmp_path / "run.pt"
    torch.manual_seed(1)
    whole, logged_whole = Linear(8, 2, {"pooled": (6,)}), []
    train(whole, data(), 4, 0, {"type": "SGD", "lr": 0.1}, epoch_log=logged_whole.append, schedule=text)
    logged = []
    for epochs in (2, 4):  # killed after epoch 2, then started again
        torch.manual_seed(1)
        part, checkpoint = Linear(8, 2, {"pooled": (6,)}), Checkpoint(path, {"run": 1}, log=lambda m: None)
        checkpoint.attach([part])
        train(part, data(), epochs, 0, {"type": "SGD", "lr": 0.1}, epoch_log=logged.append,
              checkpoint=checkpoint, schedule=text)
    assert [f["lr"] for f in logged] == [f["lr"] for f in logged_whole]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), part.state_dict().values()))


def test_schedule_texts_and_errors():
    assert canonical("m", "cosine+warmup:100") == "cosine:0+warmup:100:0.1"
    assert canonical("m", "warmup:5:0.5+multistep:30/60:0.1") == "multistep:30/60:0.1+warmup:5:0.5"
    assert canonical("m", None) == canonical("m", "none") == "none"
    for bad, message in [("step:0:0.1", "not a valid integer"), ("exp:2", "expected step:S:G"),
                         ("cosine+step:3:0.1", "at most one"), ("multistep:6/3:0.1", "increase"),
                         ("warmup:3:0", "not a valid number")]:
        with pytest.raises(BenchmarkError, match=message):
            canonical("m", bad)


def test_schedule_is_a_hyperparameter_of_every_trainable_method():
    methods = load_plugins().methods
    dsh = methods["dsh"].cls
    plain = resolve(dsh, "dsh", MethodSettings())
    assert "schedule" not in plain.train  # no schedule: the spec (and run id) as before
    scheduled = resolve(dsh, "dsh", MethodSettings(hparams={"dsh": {"schedule": "step:10:0.1"}}))
    assert scheduled.train["schedule"] == "step:10:0.1" and scheduled.train["optimizer"] == plain.train["optimizer"]
    with pytest.raises(BenchmarkError, match="dsh.schedule"):
        resolve(dsh, "dsh", MethodSettings(hparams={"dsh": {"schedule": "step:x:0.1"}}))
    with pytest.raises(BenchmarkError, match="unknown hyperparameter"):
        resolve(methods["lsh"].cls, "lsh", MethodSettings(hparams={"lsh": {"schedule": "cosine"}}))


def test_cmbh_finetune_recipe_is_the_papers_step_schedule():
    cmbh = load_plugins().methods["cmbh"].cls
    finetune = resolve(cmbh, "cmbh", regime_settings(MethodSettings(), cmbh, "cmbh", "finetune")).train
    assert (finetune["epochs"], finetune["optimizer"]["lr"], finetune["schedule"]) == (100, 1e-3, "step:70:0.1")
    frozen = resolve(cmbh, "cmbh", regime_settings(MethodSettings(), cmbh, "cmbh", "frozen")).train
    assert "schedule" not in frozen and frozen["epochs"] == 21
    mine = MethodSettings(hparams={"cmbh": {"schedule": "none"}}, epochs=3)
    overridden = resolve(cmbh, "cmbh", regime_settings(mine, cmbh, "cmbh", "finetune")).train
    assert "schedule" not in overridden and overridden["epochs"] == 3  # the user's settings win


def test_records_carry_the_schedule_and_each_epochs_lr(tmp_path, cache_dir):
    out = tmp_path / "sched"
    assert main(["run", "--methods", "dsh", "--dataset", "synthetic-fg", "--input-size", "32",
                 "--bits", "8", "--epochs", "3", "--hparams", "dsh.schedule=step:1:0.5",
                 "--cache-dir", str(cache_dir), "--out", str(out), "--no-progress"]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        spec, provenance = (json.loads(v) for v in db.execute("SELECT spec, provenance FROM runs").fetchone())
    assert spec["train"]["schedule"] == "step:1:0.5"
    assert provenance["lr"] == pytest.approx([0.01, 0.005, 0.0025])  # dsh: lr 1e-2
