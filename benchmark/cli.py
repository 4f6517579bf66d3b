"""Command line: ``python -m benchmark {list,run,leaderboard}``.

Bad input ends with one ``error: ...`` line on stderr and exit status 2; a run that fails
inside a plugin is recorded and the grid goes on (exit status 1 at the end).
Set ``BENCHMARK_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import BenchmarkError
from .grid import splitfile
from .report import commands as report_commands


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line with exit status 2, like the rest."""

    def error(self, message):
        self.exit(2, f"error: {' '.join(message.split())}\n")


def _items(text: str, what: str) -> list[str]:
    """The comma-separated items of ``text``; an empty one (``12,,24``, ``12,``) is refused."""
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r} (expected comma-separated {what})")
    return items


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in _items(text, "integers")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in _items(text, "numbers")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _name_list(text: str) -> list[str]:
    return _items(text, "names")


def cmd_list(args) -> int:
    from registry import BACKBONES, DATASETS, load_plugins
    from registry.loading import BUILTIN_DISTRIBUTION
    plugins = load_plugins()
    methods = {name: entry for name, entry in plugins.methods.items()
               if not args.builtin or entry.distribution == BUILTIN_DISTRIBUTION}
    if args.default_grid:
        from .grid.defaults import DEFAULT_GRID
        methods = {name: methods[name] for name in DEFAULT_GRID["methods"] if name in methods}
    if args.names:  # for scripts: `run --methods "$(python -m benchmark list --default-grid --names)"`
        print(",".join(methods))
        return 0
    from .report.markdown import escape, table
    print(table(["method", "supervised", "inputs", "provided by"],
                [[escape(name), "yes" if entry.supervised else "no", getattr(entry.cls, "inputs", "pooled"),
                  escape(f"{entry.distribution} {entry.version} (plugin {entry.plugin})")]
                 for name, entry in methods.items()]))
    for kind, registry, owners in (("datasets", DATASETS, plugins.datasets),
                                   ("backbones", BACKBONES, plugins.backbones)):
        names = [f"{n} (plugin {owners[n]})" if n in owners else n for n in sorted(registry.module_dict)]
        print(f"{kind}: {', '.join(names)}")
    for failure in plugins.failures:
        print(f"failed plugin {failure.plugin} ({failure.distribution} {failure.version}): "
              f"{failure.reason}")
    return 0


def cmd_run(args) -> int:
    from .grid.request import GridRequest
    from .run.driver import run_grid
    request = GridRequest(methods=args.methods, dataset=args.dataset, bits=args.bits,
                          seeds=args.seeds, regime=args.regime, input_size=args.input_size,
                          epochs=args.epochs, max_classes=args.max_classes, data_root=args.data_root, out=Path(args.out),
                          overwrite=args.overwrite,
                          cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                          progress=not args.no_progress, noise=args.noise,
                          long_tail=args.long_tail, resolution=args.resolution,
                          resolution_db=args.resolution_db, val_frac=args.val_frac,
                          on_bad_image=args.on_bad_image, backbone=args.backbone,
                          backbone_weights=args.backbone_weights, device=args.device,
                          precision=args.precision, workers=args.workers,
                          keep_checkpoints=args.keep_checkpoints, hparams=args.hparams,
                          config=args.config, executor=args.executor,
                          ray_address=args.ray_address, max_parallel=args.max_parallel,
                          unseen_classes=args.unseen_classes, protocol_file=args.protocol_file)
    records = run_grid(request)
    failed = [r for r in records if r["status"] != "ok"]
    print(f"{len(records) - len(failed)} runs ok, {len(failed)} failed; "
          f"results in {Path(args.out) / 'results.sqlite'}")
    return 1 if failed else 0


def cmd_leaderboard(args) -> int:
    from registry import load_plugins
    from registry.loading import BUILTIN_DISTRIBUTION
    from .report import files as exports
    from .report.papers import PAPERS_FILE, read_papers
    out = Path(args.out)
    records = exports.load(results=Path(args.results),
                           records_file=Path(args.records) if args.records else None)
    records = [r for r in records if not (r.get("spec") or {}).get("tuning")]  # tune's trials
    papers = Path(args.papers) if args.papers else out / PAPERS_FILE
    if args.papers and not papers.is_file():
        raise BenchmarkError(f"no paper results file at {papers}")
    builtin = {n for n, e in load_plugins().methods.items() if e.distribution == BUILTIN_DISTRIBUTION}
    files = exports.build(records, read_papers(papers) if papers.is_file() else None, builtin)
    if args.check:
        stale = exports.stale(files, out)
        for name in stale:
            print(f"stale: {out / name} differs from the regenerated leaderboard")
        print("leaderboards up to date" if not stale else f"{len(stale)} stale leaderboard file(s)")
        return 1 if stale else 0
    for path in exports.write(files, out):
        print(f"wrote {path}")
        if args.print and path.suffix == ".md" and path.name != "README.md":
            print(path.read_text())
    return 0


def cmd_check_plugin(args) -> int:
    from . import conformance
    from registry import load_plugins
    names = conformance.methods_of(args.name)
    plugins = load_plugins()
    if names == [args.name] and args.name not in plugins.methods \
            and args.name not in {f.plugin for f in plugins.failures}:
        raise BenchmarkError(f"no method or plugin named {args.name!r}; registered methods: "
                             f"{', '.join(plugins.methods) or '(none)'}")
    failed_total = 0
    for name in names:
        entry = plugins.methods.get(name)
        origin = (f" (plugin {entry.plugin}, {entry.distribution} {entry.version})"
                  if entry else "")
        print(f"check-plugin {name}{origin}")
        results = conformance.run_checks(name)
        for result in results:
            print(f"  {'PASS' if result.passed else 'FAIL'} {result.check}: {result.detail}")
        failed = sum(not r.passed for r in results)
        failed_total += failed
        print(f"  {len(results) - failed} passed, {failed} failed")
    return 1 if failed_total else 0


def cmd_perf(args) -> int:
    from .eval import perf
    if args.threads < 1:
        raise BenchmarkError(f"--threads must be at least 1, got {args.threads}")
    perf.main(quick=args.quick, scale=not args.no_scale, threads=args.threads, codes=args.codes)
    return 0


def cmd_data(args) -> int:
    from .data import tools as datatools
    if args.action == "info":
        problems = datatools.info(args.name, args.data_root, check_images=not args.no_images)
        return 1 if problems else 0
    datatools.download(args.name, args.data_root, url=args.url, md5=args.md5, sha256=args.sha256)
    return 0


def _list_parser(sub) -> None:
    listing = sub.add_parser("list", help="list registered methods and failed plugins")
    listing.add_argument("--builtin", action="store_true", help="only this project's methods")
    listing.add_argument("--names", action="store_true", help="print only a comma-separated list")
    listing.add_argument("--default-grid", action="store_true",
                         help="only the methods of the default leaderboard grid")


def _methods_and_data(parser) -> None:
    """The arguments ``run`` and ``tune`` share: methods, dataset, data root."""
    parser.add_argument("--methods", type=_name_list, required=True)
    parser.add_argument("--dataset", default="cub100")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the dataset folders (default: $BENCHMARK_DATA_ROOT)")


def _run_parser(sub) -> None:
    run = sub.add_parser("run", help="train and evaluate methods x bits x seeds")
    _methods_and_data(run)
    run.add_argument("--bits", type=_int_list, default=[12, 24, 32, 48])
    run.add_argument("--seeds", type=_int_list, default=[0])
    run.add_argument("--regime", default="frozen")
    run.add_argument("--input-size", type=int, default=224)
    run.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    _settings_arguments(run)
    run.add_argument("--max-classes", type=int, default=None,
                     help="use only the first K classes (quick runs; a separate leaderboard)")
    run.add_argument("--out", default="results")
    run.add_argument("--overwrite", default="missing", choices=["never", "missing", "always"])
    run.add_argument("--cache-dir", default=None,
                     help="feature cache (default: $BENCHMARK_CACHE_DIR or ~/.cache/fghashbench)")
    run.add_argument("--no-progress", action="store_true")
    _executor_arguments(run)
    _protocol_arguments(run)


def _executor_arguments(run) -> None:
    run.add_argument("--executor", default="local", choices=["local", "ray"],
                     help="local: one run after another in this process; ray: one Ray task per run")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="Ray cluster to join (auto: the one running here; default: start a "
                          "local Ray with this machine's CPUs)")
    run.add_argument("--max-parallel", type=int, default=None, metavar="N",
                     help="at most N runs at once on Ray (default: the cluster's CPUs)")


def _settings_arguments(parser) -> None:
    parser.add_argument("--hparams", default=None, metavar="M.NAME=V[,...]",
                        help="method hyperparameters, e.g. dsh.alpha=0.1,dsh.lr=0.02")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="an mmengine config (.py/.yaml/.json): hparams, variants, selection")


def _tune_parser(sub) -> None:
    tune = sub.add_parser("tune", help="equal-budget hyperparameter search on a validation split")
    _methods_and_data(tune)
    tune.add_argument("--bits", type=int, default=32, help="the one bit length tuned at")
    tune.add_argument("--trials", type=int, default=20, help="complete trials per method")
    tune.add_argument("--val-frac", type=float, default=0.2,
                      help="per class, this share of the train split are the tuning queries")
    tune.add_argument("--seed", type=int, default=0, help="split, sampler and run seed")
    tune.add_argument("--epoch-cap", type=int, default=30, help="most epochs of any trial")
    tune.add_argument("--max-classes", type=int, default=None)
    tune.add_argument("--input-size", type=int, default=224)
    tune.add_argument("--out", default="results/tune")
    tune.add_argument("--cache-dir", default=None,
                      help="feature cache (default: $BENCHMARK_CACHE_DIR or ~/.cache/fghashbench)")
    tune.add_argument("--progress", action="store_true", help="show progress bars")
    _settings_arguments(tune)


def cmd_tune(args) -> int:
    from .tune.study import TuneRequest, tune
    tune(TuneRequest(methods=args.methods, dataset=args.dataset, bits=args.bits,
                     trials=args.trials, val_frac=args.val_frac, seed=args.seed,
                     epoch_cap=args.epoch_cap, out=Path(args.out), data_root=args.data_root,
                     cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                     max_classes=args.max_classes, input_size=args.input_size,
                     progress=args.progress, hparams=args.hparams, config=args.config))
    return 0


def _protocol_arguments(run) -> None:
    protocol = run.add_argument_group("protocols (every combination of the listed values is run)")
    protocol.add_argument("--noise", default=None, metavar="KIND:R[,R...]",
                          help="train-label noise, e.g. symmetric:0,0.2,0.5 or pairflip:0.4")
    protocol.add_argument("--long-tail", default=None, metavar="exp:RHO[,RHO...]",
                          help="exponential long-tailed train split, largest/smallest = RHO")
    protocol.add_argument("--resolution", type=_float_list, default=[1], metavar="S[,S...]",
                          help="downsample query images by factor S")
    protocol.add_argument("--resolution-db", type=float, default=1, metavar="S",
                          help="downsample database images by factor S (default 1: full size)")
    protocol.add_argument("--val-frac", type=float, default=0.0, metavar="F",
                          help="carve F of each class's train images for validation-based "
                               "model selection; the reported run is retrained on the full "
                               "training split for the selected epochs (default 0: last epoch)")
    protocol.add_argument("--unseen-classes", type=_float_list, default=[0.0], metavar="F[,F...]",
                          help="hold a seeded share F of the classes out of training; each F runs "
                               "seen@seen, seen@all, unseen@unseen and unseen@all")
    protocol.add_argument("--protocol-file", default=None, metavar="FILE",
                          help="run exactly the split of a file from `protocol export` (its "
                               "protocol and seed)")
    run.add_argument("--on-bad-image", default="fail", choices=["fail", "skip"],
                     help="an unreadable image fails the runs (default) or is left out")
    run.add_argument("--backbone", default="efficientnet_lite0",
                     help="backbone (registry BACKBONES): efficientnet_lite0, resnet18, resnet50")
    run.add_argument("--backbone-weights", default=None, metavar="PATH|none",
                     help="ImageNet checkpoint for the backbone (torchvision or mmpretrain "
                          "format); none: random init, said explicitly")
    compute = run.add_argument_group("compute (recorded; only --precision changes a run's identity)")
    compute.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:N")
    compute.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    compute.add_argument("--workers", type=int, default=None, help="finetune image loaders")
    compute.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints/*.pt")


def _check_parser(sub) -> None:
    check = sub.add_parser("check-plugin", help="run the conformance kit on a method or plugin")
    check.add_argument("name", help="a method name or an entry-point (plugin) name")


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="inspect (info) or fetch (download) a dataset")
    data.add_argument("action", choices=["info", "download"])
    data.add_argument("name", help="dataset name, e.g. cub200, aircraft, market1501")
    data.add_argument("--data-root", default=None,
                      help="folder holding the dataset folders (default: $BENCHMARK_DATA_ROOT)")
    data.add_argument("--no-images", action="store_true",
                      help="info: skip opening every image (truncation check)")
    data.add_argument("--url", default=None, help="download: a mirror of the official archive")
    data.add_argument("--sha256", default=None,
                      help="download: the SHA-256 the --url archive must have (or --md5)")
    data.add_argument("--md5", default=None, help="download: the MD5 the --url archive must have")


def _leaderboard_parser(sub) -> None:
    board = sub.add_parser("leaderboard", help="write leaderboard markdown from a result store")
    source = board.add_mutually_exclusive_group()
    source.add_argument("--results", default="results", help="a results folder (SQLite store)")
    source.add_argument("--records", default=None,
                        help="an exported records.jsonl instead of a store (what CI checks)")
    board.add_argument("--papers", default=None,
                       help="quoted paper numbers (default: OUT/paper_results.json if present)")
    board.add_argument("--out", default="leaderboards")
    board.add_argument("--check", action="store_true",
                       help="exit 1 when any file in --out (markdown, plots, records) differs "
                            "byte for byte from the regenerated one")
    board.add_argument("--print", action="store_true", help="also print the tables")


def _perf_parser(sub) -> None:
    perf = sub.add_parser("perf", help="time evaluation and faiss search (ratios from one run)")
    perf.add_argument("--quick", action="store_true", help="toy sizes (seconds; for tests)")
    perf.add_argument("--no-scale", action="store_true",
                      help="skip the 10k x 1M mAP scale test")
    perf.add_argument("--codes", help="runs' codes.npz (comma-separated) for section 4's trained codes")
    perf.add_argument("--threads", type=int, default=1,
                      help="threads for evaluation and search throughput (default 1: like "
                           "for like with the single-threaded reference loop)")


def cmd_reproduce(args) -> int:
    from .run.reproduce import Selection, render, reproduce
    rows = reproduce(Path(args.records), Selection(args.methods, args.bits, args.seeds, args.sample),
                     out=Path(args.out) if args.out else None, data_root=args.data_root,
                     cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                     allow_code_change=args.allow_code_change)
    print(render(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def _reproduce_parser(sub) -> None:
    rep = sub.add_parser("reproduce", help="re-run committed records and compare their headline")
    rep.add_argument("--records", required=True, help="a records.jsonl (e.g. leaderboards/records.jsonl)")
    rep.add_argument("--methods", type=_name_list, default=None)
    rep.add_argument("--bits", type=_int_list, default=None)
    rep.add_argument("--seeds", type=_int_list, default=None)
    rep.add_argument("--sample", type=int, default=None, help="re-run N records (seeded choice)")
    rep.add_argument("--data-root", default=None)
    rep.add_argument("--cache-dir", default=None)
    rep.add_argument("--out", default=None, help="results folder for the re-runs (default: a temp dir)")
    rep.add_argument("--allow-code-change", action="store_true",
                     help="compare even when a method's code or defaults changed since its record")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmark", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_list_parser, _run_parser, _check_parser, _data_parser, _leaderboard_parser,
                _perf_parser, _reproduce_parser, *report_commands.PARSERS, _tune_parser,
                splitfile.add_parser):
        add(sub)
    return p


COMMANDS = {"list": cmd_list, "run": cmd_run, "data": cmd_data, "check-plugin": cmd_check_plugin,
            "leaderboard": cmd_leaderboard, "perf": cmd_perf, "reproduce": cmd_reproduce,
            **report_commands.COMMANDS, "tune": cmd_tune, "protocol": splitfile.command}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished runs are kept in the store", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for users, traceback on request
        if os.environ.get("BENCHMARK_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
