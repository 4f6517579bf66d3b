"""Peak resident memory of frozen-regime runs as the dataset grows: a pooled-head run and a
stage-map run at 10k and 50k items, and the growth ratio.

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--sizes 10000,50000] [--input-size 64]

Synthetic cached features (fp16 ``.npy`` files shaped like EfficientNet-Lite0's outputs at
``--input-size``, random values) are written once into a temporary folder; each run then
happens in a fresh process that opens them as the harness's feature cache does
(``features.cache.open_features``) and calls ``run.method_run.run_method`` on a
``FrozenInputs`` of an 80/20 train/test split (100 classes): one epoch of SGD at batch 256,
``on_epoch_start`` reading every training input in chunks, then encoding the database
(train) and the queries. The peak is the process's peak resident set (``VmHWM``; file pages
mapped and touched would count: the run reads rows with file reads, not through the map);
the baseline is the same before the run (imports, cache opened, split made). ``eager``
is the same stage-map run with every split's inputs selected as float32 tensors up front
(how runs read features before), for comparison.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.method import HashMethod

CHANNELS = {"s8": 40, "s16": 112, "s32": 320}
STRIDES = {"s8": 8, "s16": 16, "s32": 32}
CLASSES = 100
CONFIG = {"epochs": 1, "batch_size": 256, "optimizer": {"type": "SGD", "lr": 0.01}}


class PooledHead(HashMethod):
    """A linear hash head on the pooled feature."""
    name = "memory-pooled"
    train_config = CONFIG

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)
        self.centre = None

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def on_epoch_start(self, epoch, data):
        self.centre = torch.cat([self.encode({"pooled": x}) for x in data.inputs["pooled"].split(512)]).mean(0)

    def loss(self, batch):
        h = torch.tanh(self.encode(batch["inputs"]))
        same = (batch["labels"][:, None] == batch["labels"][None]).float() * 2 - 1
        return {"pairwise": ((h @ h.T) / self.bits - same).pow(2).mean()}


class StageHead(PooledHead):
    """The same head on the pooled feature concatenated with every stage map's channel
    means (so every batch, every encode chunk and ``on_epoch_start`` read the stage maps)."""
    name = "memory-stages"
    inputs = "stages"

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        width = input_shapes["pooled"][0] + sum(input_shapes[s][0] for s in CHANNELS)
        self.head = torch.nn.Linear(width, bits)

    def encode(self, inputs):
        parts = [inputs["pooled"]] + [F.adaptive_avg_pool2d(inputs[s], 1).flatten(1) for s in CHANNELS]
        return self.head(torch.cat(parts, 1))

    def on_epoch_start(self, epoch, data):
        chunks = zip(*(data.inputs[n].split(512) for n in ("pooled", *CHANNELS)))
        self.centre = torch.cat([self.encode(dict(zip(("pooled", *CHANNELS), c))) for c in chunks]).mean(0)


def shapes(input_size: int) -> dict[str, tuple]:
    out = {s: (c, max(1, input_size // STRIDES[s]), max(1, input_size // STRIDES[s]))
           for s, c in CHANNELS.items()}
    out["pooled"] = (1280,)
    return out


def write_cache(folder: Path, n: int, input_size: int) -> None:
    """Random fp16 features of ``n`` images, written in chunks (and a ``done`` marker)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, shape in shapes(input_size).items():
        array = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16,
                                          shape=(n,) + shape)
        for start in range(0, n, 2000):
            stop = min(n, start + 2000)
            array[start:stop] = rng.standard_normal((stop - start,) + shape, dtype=np.float32)
        array.flush()
        del array
    (folder / "done").write_text('{"bad": []}')


def child(folder: Path, kind: str) -> None:
    """One run in this (fresh) process; prints the baseline and peak RSS in MiB."""
    from benchmark.features.cache import open_features
    from benchmark.grid.protocols import Protocol, materialise
    from benchmark.run.inputs import FrozenInputs
    from benchmark.run.method_run import run_method
    features = open_features(folder)
    n = len(features.arrays["pooled"])
    labels = np.random.default_rng(1).integers(0, CLASSES, n)
    is_train = np.arange(n) % 5 != 0
    split = materialise(labels, is_train, CLASSES, Protocol(), seed=0)
    method = PooledHead if kind == "pooled" else StageHead
    source = FrozenInputs(method, split, {1: features})
    if kind == "eager":
        views = source.views
        source.views = lambda factor, index: {k: v.materialise() for k, v in views(factor, index).items()}
    base = peak_rss_mib()
    run_method(method, {}, source, labels, CLASSES, bits=32, seed=0)
    print(f"{base:.0f} {peak_rss_mib():.0f}")


def peak_rss_mib() -> float:
    """This process's peak resident set: ``VmHWM`` (Linux; ``ru_maxrss`` would also count
    the parent's memory at the fork), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder: Path, kind: str) -> tuple[float, float]:
    result = subprocess.run([sys.executable, __file__, "--child", str(folder), kind],
                            capture_output=True, text=True, check=True)
    base, peak = result.stdout.split()[-2:]
    return float(base), float(peak)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--no-eager", action="store_true", help="skip the eager comparison")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), args.child[1])
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = ["pooled", "stages"] + ([] if args.no_eager else ["eager"])
    per_item = {k: int(np.prod(v)) * 4 for k, v in shapes(args.input_size).items()}
    stage_bytes = sum(v for k, v in per_item.items() if k != "pooled")
    print(f"features at {args.input_size} px: {stage_bytes / 1024:.1f} KiB of float32 stage maps "
          f"and {per_item['pooled'] / 1024:.1f} KiB pooled per item")
    print("| items | run | whole-set float32 stage maps MiB | baseline RSS MiB | peak RSS MiB |")
    print("|---|---|---|---|---|")
    peaks: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"cache{n}"
            write_cache(folder, n, args.input_size)
            for kind in kinds:
                base, peak = measure(folder, kind)
                peaks[kind, n] = peak
                print(f"| {n:,} | {kind} | {n * stage_bytes / 2**20:,.0f} | {base:,.0f} | {peak:,.0f} |")
    small, large = sizes[0], sizes[-1]
    for kind in kinds:
        print(f"{kind}: peak RSS x{peaks[kind, large] / peaks[kind, small]:.2f} from {small:,} to "
              f"{large:,} items (+{peaks[kind, large] - peaks[kind, small]:,.0f} MiB; the whole "
              f"set's float32 stage maps grow by {(large - small) * stage_bytes / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
