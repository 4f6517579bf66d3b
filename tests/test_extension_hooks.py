"""Third-party datasets and backbones register through the plugin hooks (fake installed
distributions, as the method tests do), appear in ``list`` and run; built-in names win;
the finetune regime calls ``on_train_end`` like the frozen one."""
import sqlite3
from types import SimpleNamespace

import torch

from benchmark.data import build_dataset
from benchmark.grid.protocols import Protocol, materialise
from benchmark.method import HashMethod
from benchmark.run.inputs import FinetuneInputs
from benchmark.run.method_run import run_method
from tests.conftest import make_plugin_dist, run_cli

DATA_AND_BACKBONE = """
import torch
from torch import nn
from registry import hookimpl
from benchmark.data import build_dataset

def tiny_birds(data_root=None, strict=True):
    ds = build_dataset("synthetic-fg", num_classes=4, train_per_class=6, test_per_class=3,
                       image_size=32)
    ds.name = "tiny-birds"
    return ds

class TinyNet(nn.Module):
    mean, std, weights_id = (0.5,) * 3, (0.25,) * 3, "tinynet-random-v1"
    def __init__(self, pretrained=True, weights=None):
        super().__init__()
        torch.manual_seed(0)
        self.s8 = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.s16 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.s32 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    def forward(self, x):
        s8 = torch.relu(self.s8(x)); s16 = torch.relu(self.s16(s8)); s32 = torch.relu(self.s32(s16))
        return {"s8": s8, "s16": s16, "s32": s32, "pooled": s32.mean(dim=(2, 3))}

@hookimpl
def register_datasets(register):
    register("tiny-birds", tiny_birds)

@hookimpl
def register_backbones(register):
    register("tinynet", TinyNet)
"""

CLASHING = """
from registry import hookimpl

@hookimpl
def register_datasets(register):
    register("cub100", lambda data_root=None, strict=True: None)
"""


def test_plugin_dataset_and_backbone_are_listed_and_run(tmp_path):
    site = make_plugin_dist(tmp_path / "site", "tiny-extras", "tinyextras", "tiny_extras",
                            DATA_AND_BACKBONE, "0.2")
    make_plugin_dist(site, "clasher", "clasher", "clasher_plugin", CLASHING, "1.0")
    env = {"PYTHONPATH": str(site)}
    listing = run_cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "tiny-birds (plugin tinyextras)" in listing.stdout
    assert "tinynet (plugin tinyextras)" in listing.stdout
    assert "failed plugin clasher (clasher 1.0): ValueError: dataset 'cub100' is already registered" \
        in listing.stdout
    out = tmp_path / "results"
    result = run_cli("run", "--methods", "lsh,dsh", "--dataset", "tiny-birds", "--backbone", "tinynet",
                     "--input-size", "32", "--bits", "8", "--epochs", "1", "--out", out,
                     "--cache-dir", tmp_path / "cache", "--no-progress", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT method, dataset, backbone, status, "
                          "json_extract(metrics, '$.map') FROM runs ORDER BY method").fetchall()
    assert [r[:4] for r in rows] == [("dsh", "tiny-birds", "tinynet", "ok"),
                                     ("lsh", "tiny-birds", "tinynet", "ok")]
    assert all(0 < r[4] <= 1 for r in rows)


class EndCounter(HashMethod):
    """Counts ``on_train_end`` calls and checks what it is given."""
    name = "end-counter"
    train_config = {"epochs": 2, "batch_size": 8, "optimizer": {"type": "SGD", "lr": 0.01}}
    ended: list = []

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.proj = torch.nn.Linear(input_shapes["pooled"][0], bits)

    def encode(self, inputs):
        return self.proj(inputs["pooled"])

    def loss(self, batch):
        return {"l2": self.encode(batch["inputs"]).pow(2).mean()}

    def on_train_end(self, data):
        EndCounter.ended.append((len(data), tuple(data.inputs["pooled"].shape), self.training))


def test_finetune_calls_on_train_end_once_with_all_training_inputs():
    ds = build_dataset("synthetic-fg", num_classes=3, train_per_class=4, test_per_class=2,
                       image_size=32)
    split = materialise(ds.labels, ds.is_train, ds.num_classes, Protocol(), seed=0)
    spec = {"input_size": 32, "seed": 0, "backbone": "efficientnet_lite0", "protocol": Protocol().spec()}
    source = FinetuneInputs(EndCounter, split, ds, spec,
                            SimpleNamespace(backbone_weights=None, on_bad_image="fail"))
    EndCounter.ended = []
    run_method(EndCounter, {}, source, ds.labels, ds.num_classes, 8, seed=0, epochs=2)
    assert EndCounter.ended == [(12, (12, 1280), False)]
