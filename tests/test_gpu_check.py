"""benchmarks/gpu_check.sh (the prepared GPU check) runs end to end on the CPU at a tiny
setting: every method finetuned and recorded, a table of img/s and mAP, a leaderboard, the
stage-map speed table (old and new code on the same device). And
what it relies on without a GPU: --device / --precision checked up front, precision (not
the device) in the run id, autocast training, frozen data moved to the method's device."""
import os
import re
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmark.data import build_dataset
from benchmark.errors import BenchmarkError
from benchmark.grid.protocols import Protocol, materialise
from benchmark.grid.request import GridRequest
from benchmark.grid.runs import expand, resolve_methods
from benchmark.run.inputs import FinetuneInputs
from benchmark.run.loop import TrainData, epoch_data, to_device
from benchmark.run.method_run import run_method
from plugins.dsh import DSH
from tests.conftest import ROOT

METHODS = ("cmbh", "a2netpp", "csq", "dsh", "thesis-sld")


def test_gpu_check_script_at_a_tiny_cpu_setting(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu",
               GPU_CHECK_DATASET="synthetic-fg", GPU_CHECK_CLASSES="2", GPU_CHECK_EPOCHS="1",
               GPU_CHECK_SIZE="64", GPU_CHECK_WORKERS="0", GPU_CHECK_OUT=str(tmp_path / "out"),
               GPU_CHECK_BOARD=str(tmp_path / "board"), GPU_CHECK_SPEED_METHODS="cmbh",
               GPU_CHECK_SPEED_EPOCHS="1", OUT=str(tmp_path / "back"))
    (tmp_path / "back").mkdir()  # the device tool's folder of files sent back
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "back" / "gpu_check.log").read_text()
    assert "gpu_check: leaderboard in" in log and "| cmbh |" in log
    with tarfile.open(tmp_path / "back" / "gpu_check.tgz") as packed:
        names = packed.getnames()
    assert any(n.endswith("results.sqlite") for n in names), names
    assert any(n.endswith("synthetic-fg-first2.md") for n in names), names
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in METHODS}
    assert sorted(rows) == sorted(METHODS)
    for method, (_, status, epochs, device, speed, map_, _wall) in rows.items():
        assert (status, epochs, device) == ("ok", "1", "cpu"), rows[method]
        assert float(speed) > 0 and 0 < float(map_) <= 1
    index = (tmp_path / "board" / "README.md").read_text()
    assert "finetune" in index and (tmp_path / "board" / "synthetic-fg-first2.md").is_file()
    # then the stage-map speed check: old and new code timed on the same device and inputs
    speed = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| cmbh |")]
    assert len(speed) == 2, result.stdout  # the timing row and the floor row (on the CPU)
    old_cpu, new_cpu = float(speed[0][2]), float(speed[0][3])  # 0.1 s runs: may print 0.0
    assert old_cpu >= 0 and new_cpu >= 0 and float(speed[0][4].strip().removesuffix("x")) > 0
    assert "cmbh: equal bits:" in result.stdout and "device cpu" in result.stdout


def test_gpu_bundle_packs_the_old_code_and_the_data_and_checks_each_calls_size(tmp_path):
    """benchmarks/gpu_bundle.sh without its wheel download (no index needed): the old code as
    of the stage-map benchmark's base commit, the dataset folders, each device call's size
    against its budget; a missing dataset or missing wheels: one line and exit 2."""
    (tmp_path / "root" / "toy" / "images").mkdir(parents=True)
    (tmp_path / "root" / "toy" / "images" / "a.jpg").write_bytes(b"x" * 1000)
    env = dict(os.environ, PYTHON=sys.executable, GPU_BUNDLE_DIR=str(tmp_path / "bundle"),
               GPU_BUNDLE_WHEELS="none", GPU_BUNDLE_DATASETS="toy",
               BENCHMARK_DATA_ROOT=str(tmp_path / "root"))
    script = ["bash", str(ROOT / "benchmarks" / "gpu_bundle.sh")]

    def bundle(*args, **extra):
        return subprocess.run(script + list(args), env={**env, **extra}, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    done = bundle()
    assert done.returncode == 0, done.stdout + done.stderr
    base = re.search(r'^BASE = "(\w+)"', (ROOT / "benchmarks" / "stage_map_speed.py").read_text(),
                     re.M).group(1)  # the commit the speed benchmark compares with
    old = subprocess.run(["git", "show", f"{base}:plugins/cmbh/__init__.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert (tmp_path / "bundle" / "old" / "plugins" / "cmbh" / "__init__.py").read_text() == old
    assert (tmp_path / "bundle" / "data" / "toy" / "images" / "a.jpg").stat().st_size == 1000
    calls = [line for line in done.stdout.splitlines() if "device call" in line or "at once" in line]
    assert len(calls) == 2 and all("of 64.0 MiB" in c for c in calls), done.stdout
    assert "bundle/wheels" in calls[0] and "bundle/data" in calls[1] and "gpu_check.sh" in calls[1]
    over = bundle(GPU_BUNDLE_BUDGET_MIB="1")  # the working tree alone is over 1 MiB
    assert over.returncode == 1 and over.stderr.count("\n") == 1 and "over its 1.0 MiB" in over.stderr
    missing = bundle(GPU_BUNDLE_DATASETS="absent")
    assert missing.returncode == 2 and missing.stderr.strip() == \
        f"gpu_bundle: no dataset folder {tmp_path / 'root'}/absent"
    no_wheels = bundle("install")
    assert no_wheels.returncode == 2 and "no " in no_wheels.stderr and "wheels" in no_wheels.stderr


def test_device_and_precision_flags_are_checked_before_any_run(tmp_path):
    def request(**kw):
        return GridRequest(methods=["dsh"], dataset="synthetic-fg", out=tmp_path, **kw)
    for bad, needle in (({"device": "tpu"}, "--device must be"),
                        ({"device": "cuda:0"} if not torch.cuda.is_available() else
                         {"device": f"cuda:{torch.cuda.device_count()}"}, "--device cuda"),
                        ({"precision": "bf16"}, "is for --regime finetune"),
                        ({"regime": "finetune", "precision": "fp8"}, "--precision must be"),
                        ({"regime": "finetune", "workers": -1}, "--workers")):
        with pytest.raises(BenchmarkError, match=needle):
            request(**bad).validate()
    request(device="cpu", regime="finetune", precision="bf16").validate()


def test_precision_is_part_of_a_finetune_run_id_and_the_device_is_not():
    ds = build_dataset("synthetic-fg", num_classes=2, train_per_class=2, test_per_class=1, image_size=32)
    entries = resolve_methods(["dsh"])

    def run_id(**kw):
        (_, _, rid), = expand(GridRequest(methods=["dsh"], bits=[8], **kw), entries, ds)
        return rid
    assert run_id(regime="finetune", device="cpu") == run_id(regime="finetune", device="auto")
    assert run_id(regime="finetune") != run_id(regime="finetune", precision="bf16")
    assert run_id(regime="frozen") == run_id(regime="frozen", device="cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_finetune_trains_under_autocast(precision):
    ds = build_dataset("synthetic-fg", num_classes=2, train_per_class=4, test_per_class=2, image_size=32)
    split = materialise(ds.labels, ds.is_train, ds.num_classes, Protocol(), seed=0)
    spec = {"input_size": 32, "seed": 0, "backbone": "resnet18", "protocol": Protocol().spec(),
            "precision": precision}
    request = SimpleNamespace(backbone_weights=None, on_bad_image="fail", device="cpu", workers=0)
    source = FinetuneInputs(DSH, split, ds, spec, request)
    assert (source.amp.scaler is not None) == (precision == "fp16")
    result = run_method(DSH, {}, source, ds.labels, ds.num_classes, 8, seed=0, epochs=2)
    assert result["codes"]["db_codes"].shape == (8, 8) and all(np.isfinite(result["history"]))
    assert result["train_images_per_s"] > 0


def test_frozen_batches_and_epoch_data_go_to_the_method_device():
    data = TrainData({"pooled": torch.ones(4, 3)}, torch.arange(4), 2)
    meta = torch.device("meta")
    moved = epoch_data(data, meta)
    assert moved.inputs["pooled"].device == meta and moved.labels.device == meta
    assert epoch_data(data, torch.device("cpu")) is data
    batch = to_device(next(data.batches()), meta)
    assert {batch["inputs"]["pooled"].device, batch["labels"].device, batch["indices"].device} == {meta}
