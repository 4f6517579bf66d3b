"""Stage-map methods before and after the issue #17 speed-ups, timed in one run on the same
inputs: each method's old code (checked out of git at ``BASE`` into temporary modules at run
time, with the harness's old feature reads, training batches and process settings) and its
current code train and encode on a feature cache (cub100's by default), one after the other, each in a
fresh child process (process-wide settings such as the allocator's stay with their side).

    OMP_NUM_THREADS=1 python benchmarks/stage_map_speed.py [--methods cmbh,thesis-ddl] \
        [--epochs N] [--bits 32] [--repeats 1] [--data-root DIR] [--device cpu|cuda] \
        [--dataset cub100] [--max-classes K] [--input-size 224] [--old-code DIR]

Each timing is one ``run.method_run.run_method`` (construct, train for ``--epochs`` epochs,
default the method's own, with its ``on_epoch_start`` and ``on_train_end``, encode the
database and the queries): process CPU seconds and wall seconds, and their old/new ratios. On a shared
machine the CPU seconds are the steadier measure. The query and database codes of both are
compared (share of equal bits, tie-aware mAP of each): the changes are meant to move
numbers by float rounding only, which a trained network may still amplify into some
flipped bits. Methods with ``train_resolutions`` read the factor-1 cache at every training
factor (the same shapes, hence the same work, as the factor-2 and -4 caches).

``--device cuda`` trains and encodes both sides on the GPU (the frozen regime's
``--device``; the cached features are read on the CPU as in any frozen run). There the wall
seconds are the measure (process CPU seconds count the host's waiting too) and no floor is
printed. ``benchmarks/gpu_check.sh`` runs it on a GPU after its finetune check.

A third child gives the fp32 floor of the current code's run: its floating-point work in
matrix products and convolutions (``torch.utils.flop_counter``; runs of 1 and 2 epochs give
the fixed and the per-epoch part), divided by the best fp32 rate measured on this core in
that child (``fp32_rate``). Code doing that work at no more than that rate cannot beat the
floor, memory-bound operations aside, so old CPU s / floor bounds what a rewrite could gain.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.data.images import build_grid_dataset  # noqa: E402
from benchmark.errors import BenchmarkError  # noqa: E402
from benchmark.eval.metrics import evaluate_retrieval  # noqa: E402
from benchmark.features import lazy  # noqa: E402
from benchmark.features.cache import extract_features  # noqa: E402
from benchmark.features.transforms import Transform  # noqa: E402
from benchmark.grid.protocols import Protocol, materialise  # noqa: E402
from benchmark.method import hparam_defaults, split_hparams  # noqa: E402
from benchmark.run import loop, method_run  # noqa: E402
from benchmark.run.device import resolve_device  # noqa: E402
from benchmark.run.inputs import FrozenInputs, train_factors  # noqa: E402

BASE = "35fcf3a"  # the last commit before the speed-ups
#: plugin modules checked out at BASE, in import order (later ones import earlier ones)
OLD_PLUGINS = ("plugins.thesis_blocks", "plugins.thesis_sld", "plugins.thesis_msd",
               "plugins.thesis_ddl", "plugins.cmbh", "plugins.a2net")
CLASSES = {"cmbh": ("plugins.cmbh", "CMBH"), "thesis-ddl": ("plugins.thesis_ddl", "ThesisDDL"),
           "thesis-msd": ("plugins.thesis_msd", "ThesisMSD"), "a2net": ("plugins.a2net", "A2Net"),
           "a2netpp": ("plugins.a2net", "A2NetPP")}


def module_path(name: str) -> tuple[str, bool]:
    """(repository path, is a package) of a module name."""
    folder = ROOT / Path(*name.split("."))
    if (folder / "__init__.py").is_file():
        return f"{folder.relative_to(ROOT).as_posix()}/__init__.py", True
    return f"{folder.relative_to(ROOT).as_posix()}.py", False


def old_source(path: str, old_code: str | None) -> str:
    """The file at repository ``path`` as of ``BASE``: ``git show``, or read from the
    folder ``old_code`` (``git archive BASE benchmark plugins | tar -x -C DIR``, for a
    machine that gets the working tree without its git history)."""
    if old_code:
        return (Path(old_code) / path).read_text()
    return subprocess.run(["git", "show", f"{BASE}:{path}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def old_module(name: str, old_code: str | None) -> types.ModuleType:
    """Module ``name`` as of ``BASE``, executed from ``old_source`` under its own name."""
    path, is_package = module_path(name)
    source = old_source(path, old_code)
    module = types.ModuleType(name)
    module.__file__ = str(ROOT / path)
    module.__package__ = name if is_package else name.rpartition(".")[0]
    if is_package:
        module.__path__ = [str((ROOT / path).parent)]
    exec(compile(source, f"{BASE}:{path}", "exec"), module.__dict__)  # noqa: S102
    return module


def use_old_code(old_code: str | None = None) -> None:
    """From now on in this process: the plugins of ``OLD_PLUGINS``,
    ``features.lazy.read_rows``, ``TrainData.batches`` and the run's process settings
    (``seed_everything``, no ``keep_freed_memory``) as of ``BASE`` (``old_source``)."""
    for name in OLD_PLUGINS:
        sys.modules[name] = old_module(name, old_code)
    read_rows = _old_function("benchmark/features/lazy.py", "benchmark.features", "read_rows",
                              old_code)

    def old_read_rows(array, rows, channels_last=False):
        assert not channels_last, "the old classes ask for no input layout"
        return read_rows(array, rows)
    lazy.read_rows = old_read_rows
    loop.TrainData.batches = _old_function("benchmark/run/loop.py", "benchmark.run",
                                           "TrainData", old_code).batches
    method_run.seed_everything = _old_function("benchmark/run/loop.py", "benchmark.run",
                                               "seed_everything", old_code)
    method_run.keep_freed_memory = lambda: False


def _old_function(path: str, package: str, attribute: str, old_code: str | None):
    """``attribute`` of the harness module at ``path`` as of ``BASE`` (its relative
    imports resolved in ``package``)."""
    module = types.ModuleType(f"{package}._old_{Path(path).stem}")
    module.__package__ = package
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(old_source(path, old_code), f"{BASE}:{path}", "exec"), module.__dict__)  # noqa: S102
    return getattr(module, attribute)


def method_class(name: str):
    module, attribute = CLASSES[name]
    __import__(module)
    return getattr(sys.modules[module], attribute)


def warm_page_cache(features) -> None:
    """Read every cached array once, so the first timed run does not pay the disk."""
    for array in features.arrays.values():
        with open(array.filename, "rb") as f:
            while f.read(1 << 24):
                pass


def prepared(side: str, name: str, args):
    """(class, hparams, training config, input source, dataset) of ``name``'s ``side`` code
    on ``--dataset``, both sides with the current code's defaults (the constructor keywords the old
    class accepts, the current training config)."""
    settings = hparam_defaults(method_class(name))
    if side == "old":
        use_old_code(args.old_code)
    cls = method_class(name)
    known = hparam_defaults(cls)  # the old class may not have every current hyperparameter
    hparams, config = split_hparams(cls, {k: v for k, v in settings.items() if k in known})
    dataset = build_grid_dataset(args.dataset, data_root=args.data_root,
                                 max_classes=args.max_classes)
    features = extract_features(dataset, transform=Transform(args.input_size), progress=False)
    warm_page_cache(features)
    split = materialise(dataset.labels, dataset.is_train, dataset.num_classes, Protocol(), 0)
    method_run.seed_everything(0)  # its first call imports torch's compiler stack: not timed
    source = FrozenInputs(cls, split, {f: features for f in {1, *train_factors(cls)}})
    source.device = resolve_device(args.device)  # where the method trains, as in a frozen run
    return cls, hparams, config, source, dataset


def run(prepared_run, args, epochs: int | None) -> dict:
    cls, hparams, config, source, dataset = prepared_run
    return method_run.run_method(cls, hparams, source, dataset.labels, dataset.num_classes,
                                 args.bits, 0, epochs=epochs, train=config)


def timed_side(side: str, name: str, args, codes_file: str) -> dict:
    """In this (child) process: one run of ``name``'s ``side`` code; CPU and wall seconds
    and the loss history, the codes written to ``codes_file``."""
    ready = prepared(side, name, args)
    cpu, wall = time.process_time(), time.perf_counter()
    result = run(ready, args, args.epochs)
    timing = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
              "history": result["history"]}
    np.savez(codes_file, **result["codes"])
    return timing


def fp32_rate(repeats: int = 3) -> float:
    """This core's best fp32 multiply-add rate, FLOP/s: the faster of a 2048^3 matrix
    product (MKL) and a (16384 x 1024) @ (1024 x 1024) product run as a channels-last 1x1
    convolution (oneDNN; MKL takes a slower path on some CPUs, AMD's among them); the best
    of ``repeats`` each."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    maps = torch.randn(64, 1024, 16, 16).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(1024, 1024, 1, 1)
    products = {2 * 2048 ** 3: lambda: a @ b,
                2 * maps.numel() * 1024: lambda: torch.nn.functional.conv2d(maps, weight)}
    best = 0.0
    for flops, product in products.items():
        product()
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best = max(best, flops / (time.perf_counter() - start))
    return best


def floor_side(name: str, args) -> dict:
    """In this (child) process: the current code's FLOPs in a run of the timed length
    (fixed part + per-epoch part, from runs of 1 and 2 epochs) and ``fp32_rate``."""
    ready = prepared("new", name, args)
    counted = []
    for epochs in (1, 2):
        with FlopCounterMode(display=False) as counter:
            run(ready, args, epochs)
        counted.append(counter.get_total_flops())
    per_epoch = counted[1] - counted[0]
    _, _, config, _, _ = ready
    epochs = args.epochs or config.get("epochs", 1)
    return {"flops": counted[0] - per_epoch + epochs * per_epoch, "rate": fp32_rate()}


def child(side: str, name: str, args, codes_file: str = "") -> dict:
    """``timed_side`` (or ``floor_side``) in a fresh Python process."""
    command = [sys.executable, __file__, "--side", side, "--methods", name, "--bits",
               str(args.bits), "--data-root", args.data_root, "--codes-file", codes_file,
               "--device", args.device, "--dataset", args.dataset,
               "--input-size", str(args.input_size),
               *(["--old-code", args.old_code] if args.old_code else []),
               *(["--epochs", str(args.epochs)] if args.epochs else []),
               *(["--max-classes", str(args.max_classes)] if args.max_classes else [])]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(old: dict, new: dict) -> str:
    """Equal-bit shares and tie-aware mAPs of two runs' codes."""
    same = {role: float((old["codes"][f"{role}_codes"] == new["codes"][f"{role}_codes"]).mean())
            for role in ("query", "db")}
    maps = [evaluate_retrieval(r["codes"]["query_codes"], r["codes"]["db_codes"],
                               r["codes"]["query_labels"], r["codes"]["db_labels"]).metrics["map_tie_aware"]
            for r in (old, new)]
    return (f"equal bits: query {same['query']:.4f}, db {same['db']:.4f}; tie-aware mAP "
            f"old {maps[0]:.4f} new {maps[1]:.4f}; last loss old {old['history'][-1]:.6f} "
            f"new {new['history'][-1]:.6f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="cmbh,thesis-ddl")
    parser.add_argument("--epochs", type=int, help="default: each method's own")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both sides train")
    parser.add_argument("--dataset", default="cub100")
    parser.add_argument("--max-classes", type=int, help="only the dataset's first K classes")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--old-code", help=f"a folder holding the files as of git {BASE} "
                        "(default: read them with git show)")
    parser.add_argument("--side", choices=("old", "new", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--codes-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:  # a child: one timed run, or the floor
        print(json.dumps(floor_side(args.methods, args) if args.side == "floor"
                         else timed_side(args.side, args.methods, args, args.codes_file)))
        return
    try:
        on_cpu = resolve_device(args.device).type == "cpu"
    except BenchmarkError as exc:  # e.g. --device cuda without a GPU
        parser.exit(2, f"stage_map_speed: {exc}\n")
    print(f"{args.dataset}{f' (first {args.max_classes} classes)' if args.max_classes else ''}, "
          f"{args.input_size} px, {args.epochs or 'each method’s own'} epochs, {args.bits} bits, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, old code = git {BASE}, "
          f"each run in its own process"
          + ("" if on_cpu else "; on this device the wall seconds are the measure"))
    print("| method | old CPU s | new CPU s | CPU ratio | old wall s | new wall s | wall ratio |")
    print("|---|---|---|---|---|---|---|")
    notes, floors = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.methods.split(","):
            runs = {"old": [], "new": []}
            for repeat in range(args.repeats):
                for side in ("old", "new"):
                    codes_file = f"{scratch}/{name}-{side}-{repeat}.npz"
                    runs[side].append(child(side, name, args, codes_file))
            for side in runs:  # the first repeat's codes are compared
                runs[side][0]["codes"] = dict(np.load(f"{scratch}/{name}-{side}-0.npz"))
            cpu = {k: min(r["cpu"] for r in v) for k, v in runs.items()}
            wall = {k: min(r["wall"] for r in v) for k, v in runs.items()}
            print(f"| {name} | {cpu['old']:.1f} | {cpu['new']:.1f} | {cpu['old'] / cpu['new']:.2f}x "
                  f"| {wall['old']:.1f} | {wall['new']:.1f} | {wall['old'] / wall['new']:.2f}x |",
                  flush=True)
            notes.append(f"{name}: {compare(runs['old'][0], runs['new'][0])}")
            if not on_cpu:  # the floor is the CPU's fp32 rate
                continue
            floor = child("floor", name, args)
            seconds = floor["flops"] / floor["rate"]
            floors.append(f"| {name} | {floor['flops'] / 1e12:.2f} | {floor['rate'] / 1e9:.0f} "
                          f"| {seconds:.1f} | {cpu['new'] / seconds:.2f} | {cpu['old'] / seconds:.2f}x |")
    print("\n".join(notes))
    if not floors:
        return
    print("\n| method | TFLOP per run (new) | fp32 GFLOP/s (best measured) | floor s "
          "| new CPU s / floor | old CPU s / floor (bound on a rewrite) |\n|---|---|---|---|---|---|")
    print("\n".join(floors))


if __name__ == "__main__":
    main()
