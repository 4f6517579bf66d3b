"""Memory that does not grow with the dataset: runs read cached features through
``FeatureView`` (rows on demand, the eager selection's exact values, the same codes), and
a grid caches only the outputs its methods read."""
import os

import numpy as np
import pytest
import torch

from benchmark.data import build_dataset
from benchmark.features import cache
from benchmark.features.cache import Features, extract_features, open_features
from benchmark.features.lazy import FeatureView
from benchmark.features.transforms import Transform
from benchmark.grid.protocols import Protocol, materialise
from benchmark.method import HashMethod
from benchmark.run.inputs import FrozenInputs, frozen_outputs
from benchmark.run.method_run import run_method
from registry import load_plugins

SHAPES = {"pooled": (1280,), "s8": (40, 8, 8), "s16": (112, 4, 4), "s32": (320, 2, 2)}
CLASSES, PER_CLASS = 6, 12


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Features:
    """Cached-looking fp16 features of 72 items (memory-mapped .npy files)."""
    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    for name, shape in SHAPES.items():
        array = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16,
                                          shape=(CLASSES * PER_CLASS,) + shape)
        array[:] = np.abs(rng.standard_normal(array.shape))
        array.flush()
    (folder / "done").write_text('{"bad": []}')
    return open_features(folder)


def split():
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    is_train = np.tile(np.arange(PER_CLASS) < 9, CLASSES)
    return labels, materialise(labels, is_train, CLASSES, Protocol(), seed=0)


def test_a_view_reads_exactly_what_the_eager_selection_holds(features):
    index = np.random.default_rng(1).permutation(len(features.arrays["s8"]))[:50]
    eager = features.select(["s8"], index)["s8"]
    view = FeatureView(features.arrays["s8"], index)
    assert len(view) == 50 and view.shape == eager.shape
    batch = torch.randperm(50)[:16]
    assert torch.equal(view[batch], eager[batch]) and torch.equal(view[3], eager[3])
    assert torch.equal(view[5:40], eager[5:40]) and torch.equal(view[:, 2], eager[:, 2])
    assert torch.equal(torch.cat(list(view.split(7))), eager)
    assert torch.equal(view.mean((2, 3)), eager.mean((2, 3)))
    # anything else is computed on the whole tensor: the same numbers
    assert torch.equal(view.mean(0), eager.mean(0)) and torch.equal(view.double(), eager.double())
    assert torch.equal(view * 2 - 1, eager * 2 - 1) and torch.equal(torch.cat([view, view]), torch.cat([eager, eager]))


class Spy(HashMethod):
    """Records what ``on_epoch_start`` and the batches hand it."""
    name = "memory-spy"
    inputs = "stages"
    train_config = {"epochs": 2, "batch_size": 16, "optimizer": {"type": "SGD", "lr": 0.01}}
    seen: list = []

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def on_epoch_start(self, epoch, data):
        Spy.seen.append(("epoch", {k: type(v) for k, v in data.inputs.items()}))

    def loss(self, batch):
        Spy.seen.append(("batch", {k: (type(v), len(v)) for k, v in batch["inputs"].items()}))
        return {"q": (torch.tanh(self.encode(batch["inputs"])).abs() - 1).pow(2).mean()}


def test_runs_see_views_and_batches_never_the_whole_split(features):
    labels, sp = split()
    Spy.seen = []
    run_method(Spy, {}, FrozenInputs(Spy, sp, {1: features}), labels, CLASSES, 8, seed=0)
    epochs = [s for kind, s in Spy.seen if kind == "epoch"]
    batches = [s for kind, s in Spy.seen if kind == "batch"]
    assert len(epochs) == 2 and all(set(t.values()) == {FeatureView} for t in epochs)
    assert batches and all(t == torch.Tensor and n <= 16 for b in batches for t, n in b.values())


def eager(source: FrozenInputs) -> FrozenInputs:
    """The same source with every role's inputs selected as float32 tensors up front."""
    views = source.views
    source.views = lambda factor, index: {k: v.materialise() for k, v in views(factor, index).items()}
    return source


@pytest.mark.parametrize("name", ["thesis-mad", "thesis-mad-nodiff", "thesis-ddl", "thesis-sld",
                                  "adsh", "cmbh", "itq"])
def test_lazy_inputs_give_the_eager_codes(features, name):
    """Methods whose hooks read ``data.inputs`` (chunked, indexed, whole-tensor statistics)
    or ``data.batches()``, per-sample training resolutions, and closed-form fits."""
    cls = load_plugins().methods[name].cls
    labels, sp = split()
    by_factor = {f: features for f in (1, 2, 4)}  # thesis-ddl trains at 1/2 and 1/4 too
    runs = [run_method(cls, {}, make(FrozenInputs(cls, sp, by_factor)), labels, CLASSES, 12,
                       seed=0, epochs=2) for make in (lambda s: s, eager)]
    for key in ("db_codes", "query_codes"):
        assert np.array_equal(runs[0]["codes"][key], runs[1]["codes"][key])
    assert runs[0]["history"] == runs[1]["history"]


def test_only_the_outputs_a_grid_reads_are_cached(tmp_path, monkeypatch):
    lsh, cmbh = (load_plugins().methods[n].cls for n in ("lsh", "cmbh"))
    assert frozen_outputs([lsh]) == ("pooled",)
    assert frozen_outputs([lsh, cmbh]) == ("pooled", "s8", "s16", "s32")
    ds = build_dataset("synthetic-fg", num_classes=4, train_per_class=3, test_per_class=2, image_size=32)
    transform = Transform(input_size=32)
    pooled = extract_features(ds, transform=transform, cache_dir=tmp_path / "a", progress=False,
                              outputs=("pooled",))
    assert sorted(pooled.arrays) == ["pooled"]
    before = os.stat(pooled.path / "pooled.npy")
    grown = extract_features(ds, transform=transform, cache_dir=tmp_path / "a", progress=False)
    assert grown.path == pooled.path and sorted(grown.arrays) == ["pooled", "s16", "s32", "s8"]
    assert os.stat(grown.path / "pooled.npy").st_ino == before.st_ino  # kept, not rewritten
    whole = extract_features(ds, transform=transform, cache_dir=tmp_path / "b", progress=False)
    for name in SHAPES:
        assert np.array_equal(grown.arrays[name], whole.arrays[name])
    monkeypatch.setattr(cache, "_compute", lambda *a, **k: pytest.fail("recomputed a cached output"))
    again = extract_features(ds, transform=transform, cache_dir=tmp_path / "b", progress=False,
                             outputs=("pooled",))  # an entry with every output serves a pooled grid
    assert sorted(again.arrays) == ["pooled", "s16", "s32", "s8"]


def test_a_channels_last_view_holds_the_same_values_in_that_layout(features):
    """``channels_last``: 4-D rows written channels-last by the one fp16 -> fp32 conversion
    (memory maps) or laid out so (in-memory arrays, tensors); other rows as they are."""
    index = np.random.default_rng(2).permutation(len(features.arrays["s8"]))[:40]
    for array in (features.arrays["s8"], np.asarray(features.arrays["s8"]),
                  torch.from_numpy(np.asarray(features.arrays["s8"]))):
        plain, last = FeatureView(array, index), FeatureView(array, index, channels_last=True)
        for rows in (torch.randperm(40)[:16], slice(3, 30)):
            values = last[rows]
            assert values.is_contiguous(memory_format=torch.channels_last)
            assert not values.is_contiguous() and torch.equal(values, plain[rows])
        assert last[0:0].shape == (0, 40, 8, 8)
        assert all(c.is_contiguous(memory_format=torch.channels_last) for c in last.split(16))
        assert torch.equal(last.materialise(), plain.materialise())
    assert last.to("cpu").channels_last and FeatureView(features.arrays["pooled"], index,
                                                         channels_last=True)[:5].is_contiguous()


class LayoutSpy(Spy):
    """Records the memory format of every 4-D input it is handed (batches at three
    training resolutions, ``on_epoch_start`` chunks, encoding)."""
    name = "layout-spy"
    channels_last_inputs = True
    train_resolutions = (1, 2, 4)

    def on_epoch_start(self, epoch, data):
        for chunk in data.inputs["s16"].split(20):
            LayoutSpy.seen.append(chunk.is_contiguous(memory_format=torch.channels_last))

    def encode(self, inputs):
        LayoutSpy.seen.append(inputs["s8"].is_contiguous(memory_format=torch.channels_last))
        return super().encode(inputs)

    def loss(self, batch):
        LayoutSpy.seen.extend(batch["inputs"][k].is_contiguous(memory_format=torch.channels_last)
                              for k in ("s8", "s16", "s32"))
        return super().loss(batch)


def test_channels_last_inputs_reach_the_method_so_and_give_the_same_codes(features):
    labels, sp = split()
    by_factor = {f: features for f in (1, 2, 4)}
    LayoutSpy.seen = []
    run_method(LayoutSpy, {}, FrozenInputs(LayoutSpy, sp, by_factor), labels, CLASSES, 8, seed=0)
    assert len(LayoutSpy.seen) > 10 and all(LayoutSpy.seen)
    ddl = load_plugins().methods["thesis-ddl"].cls
    assert ddl.channels_last_inputs
    nchw = type("ThesisDDLContiguous", (ddl,), {"channels_last_inputs": False})
    runs = [run_method(cls, {}, FrozenInputs(cls, sp, by_factor), labels, CLASSES, 12, seed=0,
                       epochs=2) for cls in (ddl, nchw)]
    for key in ("db_codes", "query_codes"):
        assert np.array_equal(runs[0]["codes"][key], runs[1]["codes"][key])
    assert runs[0]["history"] == runs[1]["history"]
