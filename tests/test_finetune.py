"""Fine-tune regime (tiny, CPU) and unreadable images met during a run."""
import json
import sqlite3
from types import SimpleNamespace

import numpy as np
import torch

from benchmark.features.backbones import build_backbone
from benchmark.data import build_dataset
from benchmark.run.inputs import FinetuneInputs
from benchmark.run.method_run import run_method
from benchmark.method import HashMethod
from benchmark.grid.protocols import Protocol, materialise
from tests.conftest import run_cli
from tests.test_data import make_cub


class ImageSpy(HashMethod):
    """Asks for images; records what each training batch holds."""
    name = "image-spy"
    inputs = "images"
    train_resolutions = (1, 2)
    train_config = {"epochs": 1, "batch_size": 8, "optimizer": {"type": "SGD", "lr": 0.01}}
    seen: list = []

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.proj = torch.nn.Linear(input_shapes["pooled"][0], bits)

    def encode(self, inputs):
        return self.proj(inputs["pooled"])

    def loss(self, batch):
        ImageSpy.seen.append({k: tuple(v.shape) for k, v in batch["inputs"].items()}
                             | {"labels": batch["labels"].clone(), "indices": batch["indices"].clone(),
                                "resolution": batch["resolution"].clone(),
                                "grad": batch["inputs"]["pooled"].requires_grad})
        return {"l2": self.encode(batch["inputs"]).pow(2).mean()}


def test_finetune_feeds_the_declared_inputs_from_augmented_images(tmp_path):
    ds = build_dataset("synthetic-fg", num_classes=4, train_per_class=4, test_per_class=2,
                       image_size=32)
    split = materialise(ds.labels, ds.is_train, ds.num_classes,
                        Protocol(noise="pairflip:0.5"), seed=0)
    weights = tmp_path / "tv_resnet18.pth"  # torchvision layout: bare state dict with fc.*
    state = build_backbone("resnet18").net.state_dict()
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(state, weights)
    spec = {"input_size": 32, "seed": 0, "backbone": "resnet18", "bits": 8, "hparams": {},
            "epochs": 1, "protocol": Protocol().spec()}
    request = SimpleNamespace(backbone_weights=str(weights), on_bad_image="fail")
    ImageSpy.seen = []
    source = FinetuneInputs(ImageSpy, split, ds, spec, request)
    start = {k: v.clone() for k, v in source.backbone.state_dict().items()}
    result = run_method(ImageSpy, {}, source, ds.labels, ds.num_classes, 8, seed=0, epochs=1)
    # the backbone is trained with the method: its weights moved (the frozen BN statistics
    # and the unused fc layer aside), and the loss' gradient reached its first layer
    after = source.backbone.state_dict()
    moved = {k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, start[k])}
    weights = {k for k, _ in source.backbone.named_parameters()}
    assert any("conv1" in k for k in moved & weights), sorted(moved)
    assert result["codes"]["query_codes"].shape == (8, 8)
    assert result["codes"]["db_codes"].shape == (16, 8)
    first = ImageSpy.seen[0]
    assert first["images"][1:] == (3, 32, 32) and first["s8"][1:] == (128, 4, 4)
    assert first["s32"][1:] == (512, 1, 1) and first["grad"]
    for batch in ImageSpy.seen:  # noisy train labels only, ratios from the declared factors
        assert (batch["labels"].numpy() == split.train_labels[batch["indices"].numpy()]).all()
        assert set(batch["resolution"].tolist()) <= {1.0, 0.5}
    assert sum(len(b["labels"]) for b in ImageSpy.seen) == 16


def test_finetune_cli_run_is_recorded(tmp_path):
    out = tmp_path / "ft"
    result = run_cli("run", "--methods", "dsh", "--dataset", "synthetic-fg", "--input-size", "32",
                     "--epochs", "1", "--bits", "8", "--regime", "finetune", "--backbone", "resnet18",
                     "--backbone-weights", "none", "--max-classes", "4",
                     "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        (regime, backbone, metrics, provenance), = db.execute(
            "SELECT regime, backbone, metrics, provenance FROM runs WHERE status = 'ok'")
    assert (regime, backbone) == ("finetune", "resnet18")
    assert 0 < json.loads(metrics)["map"] <= 1 and json.loads(provenance)["epochs"] == 1


def test_corrupt_image_fails_the_runs_or_is_skipped_never_crashing_the_grid(tmp_path, cache_dir):
    make_cub(tmp_path / "CUB_200_2011", classes=3, per_class=4)
    bad = tmp_path / "CUB_200_2011" / "images" / "001.Bird_1" / "img_2.jpg"
    bad.write_bytes(bad.read_bytes()[:50])
    common = ["--dataset", "cub200", "--data-root", tmp_path, "--input-size", "32", "--bits", "8",
              "--epochs", "1", "--cache-dir", tmp_path / "cache", "--no-progress"]
    failed = run_cli("run", "--methods", "lsh,itq", *common, "--out", tmp_path / "a")
    assert failed.returncode == 1, failed.stderr
    with sqlite3.connect(tmp_path / "a" / "results.sqlite") as db:
        rows = db.execute("SELECT method, status, error FROM runs ORDER BY method").fetchall()
    assert [r[:2] for r in rows] == [("itq", "failed"), ("lsh", "failed")]
    assert all(str(bad) in r[2] for r in rows)
    skipped = run_cli("run", "--methods", "lsh", *common, "--on-bad-image", "skip",
                      "--out", tmp_path / "b")
    assert skipped.returncode == 0, skipped.stderr
    assert f"warning: skipped unreadable image {bad}" in skipped.stdout
    codes = np.load(next((tmp_path / "b" / "runs").glob("*/codes.npz")))
    assert len(codes["db_codes"]) == 8  # 9 train images, the unreadable one left out
    # --on-bad-image is part of the run id: the run recorded under skip is not reused
    again = run_cli("run", "--methods", "lsh", *common, "--out", tmp_path / "b")
    assert again.returncode == 1 and "1 runs in the grid, 0 already recorded, 1 to run" in again.stdout


def test_finetune_inputs_come_in_the_layout_the_method_asks_for():
    """Contiguous as cached features are, or channels-last (``channels_last_inputs``), with
    the same values either way."""
    ds = build_dataset("synthetic-fg", num_classes=2, train_per_class=2, test_per_class=1, image_size=64)
    split = materialise(ds.labels, ds.is_train, ds.num_classes, Protocol(), seed=0)
    spec = {"input_size": 64, "seed": 0, "backbone": "resnet18", "protocol": Protocol().spec()}
    request = SimpleNamespace(backbone_weights=None, on_bad_image="fail", device="cpu", workers=0)
    last = type("ImageSpyChannelsLast", (ImageSpy,), {"channels_last_inputs": True})
    images = torch.randn(3, 3, 64, 64)  # s32 is 2x2: the two layouts differ
    outputs = []
    for cls in (ImageSpy, last):
        torch.manual_seed(0)
        source = FinetuneInputs(cls, split, ds, spec, request)
        source.backbone.eval()
        with torch.no_grad():
            outputs.append(source.forward(images))
    for name in ("images", "s8", "s16", "s32"):
        plain, channels_last = outputs[0][name], outputs[1][name]
        assert plain.is_contiguous() and not channels_last.is_contiguous()
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(plain, channels_last)
    assert torch.equal(outputs[0]["pooled"], outputs[1]["pooled"])
