from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import build_dataset
from benchmark.data.cub import load_cub_layout
from benchmark.data.synthetic import render_synthetic
from benchmark.errors import BenchmarkError, DataError
from tests.conftest import DATA_ROOT, needs_cub100, run_cli


def make_cub(folder: Path, first_id=1, train_flag="1", sep=" ", classes=2, per_class=3):
    """A tiny CUB-layout folder: ``classes`` x ``per_class`` real JPEGs, first image of each
    class in test, the rest in train."""
    (folder / "images").mkdir(parents=True)
    test_flag = "0" if train_flag == "1" else "1"
    lines = {k: [] for k in ("classes", "images", "labels", "split")}
    image_id = first_id
    for c in range(classes):
        name = f"{c:03d}.Bird_{c}"
        lines["classes"].append(f"{c + first_id}{sep}{name}")
        (folder / "images" / name).mkdir()
        for k in range(per_class):
            rel = f"{name}/img_{k}.jpg"
            Image.new("RGB", (40, 30), (40 * c, 10 * k, 99)).save(folder / "images" / rel)
            lines["images"].append(f"{image_id}{sep}{rel}")
            lines["labels"].append(f"{image_id}{sep}{c + first_id}")
            lines["split"].append(f"{image_id}{sep}{test_flag if k == 0 else train_flag}")
            image_id += 1
    for key, fname in (("classes", "classes.txt"), ("images", "images.txt"),
                       ("labels", "image_class_labels.txt"), ("split", "train_test_split.txt")):
        (folder / fname).write_text("\n".join(lines[key]) + "\n")
    return folder


def test_official_layout_is_one_based_with_flag_one_for_train(tmp_path):
    ds = load_cub_layout(make_cub(tmp_path / "cub"), "cub", first_id=1, train_flag="1")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.is_train.tolist() == [False, True, True] * 2
    assert ds.load(4).size == (40, 30)


def test_cub100_style_layout_zero_based_inverted_flag(tmp_path):
    ds = load_cub_layout(make_cub(tmp_path / "c", first_id=0, train_flag="0", sep=", "),
                         "c", first_id=0, train_flag="0")
    assert ds.is_train.tolist() == [False, True, True] * 2
    assert ds.classes == ["000.Bird_0", "001.Bird_1"]


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "images.txt").unlink(), "missing file"),
    (lambda f: (f / "classes.txt").write_text("1 a\nnot-a-line\n"), "line 2"),
    (lambda f: (f / "images" / "001.Bird_1" / "img_2.jpg").unlink(), r"1 image file\(s\).*img_2.jpg"),
    (lambda f: (f / "train_test_split.txt").write_text(
        "\n".join(f"{i} {'1' if i <= 3 else '0'}" for i in range(1, 7))), "no training image"),
    (lambda f: (f / "image_class_labels.txt").write_text(
        "\n".join(f"{i} 7" for i in range(1, 7))), "class id outside"),
    (lambda f: (f / "train_test_split.txt").write_text("1 1\n"), "ids differ"),
])
def test_validation_names_the_problem(tmp_path, damage, message):
    folder = make_cub(tmp_path / "cub")
    damage(folder)
    with pytest.raises(DataError, match=message):
        load_cub_layout(folder, "cub", 1, "1")


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    folder = make_cub(tmp_path / "cub")
    bad = folder / "images" / "000.Bird_0" / "img_1.jpg"
    bad.write_bytes(bad.read_bytes()[:50])
    ds = load_cub_layout(folder, "cub", 1, "1")
    with pytest.raises(DataError, match="img_1.jpg"):
        ds.load(1)


def test_unknown_dataset_and_missing_root():
    with pytest.raises(BenchmarkError, match="unknown dataset 'nope'"):
        build_dataset("nope")
    with pytest.raises(DataError, match="not found"):
        build_dataset("cub200", data_root=str(DATA_ROOT.parent))


def test_cli_without_data_root_says_where_data_is_looked_for(tmp_path):
    result = run_cli("run", "--methods", "lsh", "--dataset", "cub100", "--out", tmp_path,
                     env={"BENCHMARK_DATA_ROOT": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "BENCHMARK_DATA_ROOT" in result.stderr and "Traceback" not in result.stderr


def test_cli_malformed_folder_is_one_line_error(tmp_path):
    folder = make_cub(tmp_path / "data" / "cub100", first_id=0, train_flag="0")
    (folder / "image_class_labels.txt").write_text("garbage\n")
    result = run_cli("run", "--methods", "lsh", "--dataset", "cub100", "--data-root",
                     tmp_path / "data", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "image_class_labels.txt line 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_synthetic_fg_is_seeded_and_fine_grained():
    ds = build_dataset("synthetic-fg", num_classes=8, train_per_class=2, test_per_class=1)
    assert len(ds) == 24 and ds.num_classes == 8 and ds.is_train.sum() == 16
    a, b = np.asarray(ds.load(0)), np.asarray(ds.load(0))
    assert np.array_equal(a, b)
    assert not np.array_equal(np.asarray(ds.load(0)), np.asarray(ds.load(1)))  # pose varies
    # two species of one genus share the body colour: images differ only in a small mark
    same_pose = [np.asarray(render_synthetic(0, 5, label, 64), dtype=int) for label in (0, 1)]
    changed = (np.abs(same_pose[0] - same_pose[1]).sum(-1) > 0).mean()
    assert 0 < changed < 0.05


@needs_cub100
def test_cub100_split_and_ids():
    ds = build_dataset("cub100", data_root=str(DATA_ROOT))
    assert len(ds) == 5902 and ds.num_classes == 100
    assert ds.is_train.sum() == 2999 and (~ds.is_train).sum() == 2903
    assert ds.labels.min() == 0 and ds.labels.max() == 99


def test_feature_cache_is_keyed_by_images_transform_and_weights(tmp_path, monkeypatch):
    import torch

    from benchmark.features import cache
    from benchmark.features.backbones import build_backbone
    from benchmark.features.transforms import Transform
    make_cub(tmp_path / "CUB_200_2011", classes=2, per_class=3)
    state = build_backbone("resnet18").net.state_dict()  # torchvision layout, with fc.*
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    weights = {"a": tmp_path / "a.pth", "b": tmp_path / "b.pth"}
    torch.save(state, weights["a"])
    state["conv1.weight"] = state["conv1.weight"] * 2
    torch.save(state, weights["b"])
    computed = []
    real_compute = cache._compute
    monkeypatch.setattr(cache, "_compute", lambda *a, **k: computed.append(1) or real_compute(*a, **k))

    def extract(weight="a", transform=Transform(32)):
        ds = build_dataset("cub200", data_root=tmp_path)
        return cache.extract_features(ds, "resnet18", transform, tmp_path / "cache", progress=False,
                                      weights=str(weights[weight]))

    first = extract()
    assert extract().path == first.path and len(computed) == 1  # reused, not recomputed
    pooled = np.asarray(first.arrays["pooled"]).copy()
    others = {"transform": extract(transform=Transform(32, 2.0)), "weights": extract("b")}
    changed = tmp_path / "CUB_200_2011" / "images" / "001.Bird_1" / "img_2.jpg"
    Image.new("RGB", (40, 30), (250, 0, 0)).save(changed)
    others["images"] = extract()
    assert len(computed) == 4 and len({first.path, *(f.path for f in others.values())}) == 4
    assert not np.array_equal(np.asarray(others["weights"].arrays["pooled"]), pooled)
    moved = ~np.isclose(np.asarray(others["images"].arrays["pooled"]), pooled).all(1)
    assert moved.tolist() == [False] * 5 + [True]  # only the re-saved image (index 5)
