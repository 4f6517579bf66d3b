"""``python -m benchmark profile``: re-measure the efficiency of stored runs in one process
with one timer, so a table's latency columns are comparable across its rows.

For every ok record: the method is built from its spec (closed-form methods fitted on
random inputs of the right shape; trained weights do not change parameter counts, MACs or
timings) and checked against the record's parameter and MAC counts (a mismatch is
reported and the record keeps its own); then, with a fixed thread count:

* encode latency: backbone + ``encode`` end to end on one image, ``WARMUP`` calls, then
  ``REPEATS`` timed calls (``time.perf_counter``): p50 and p95;
* encode throughput: ``THROUGHPUT_BATCH`` images, the backbone's batch timed once per
  process and backbone (median of 3), ``encode``'s per run (median of 3);
* search latency: exact top-100 faiss Hamming search, one query at a time (p50, p95), over
  the run's database codes (``runs/<id>/codes.npz``) and over ``SCALE_DB`` codes (the run's
  codes replicated). A record without codes (an export) is searched over random codes of
  its bit length and database size; the record says which (``search_codes``).

The run's own timings move to ``efficiency.at_run``; ``efficiency.profile`` names the
process (timer, threads, hardware, 1-minute load average before and after each record).
"""
from __future__ import annotations

import os
import statistics
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import BenchmarkError
from .machine import hardware_id
from .profiling import SEARCH_K, THROUGHPUT_BATCH, profile_inference

WARMUP, REPEATS = 3, 30
SCALE_DB = 1_000_000
TIMINGS = ("encode_latency_ms", "encode_throughput", "search_latency_ms", "search_db",
           "real_search_latency_ms")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def timed(run, warmup: int = WARMUP, repeats: int = REPEATS) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        run()
        times.append(time.perf_counter() - tick)
    return times


@lru_cache(maxsize=None)
def backbone_of(name: str, size: int):
    """(backbone in eval mode, channels-last, output shapes, batch seconds) per process."""
    from ..features.backbones import build_backbone
    model = build_backbone(name, pretrained=False).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        outputs = model(torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last))
        batch = torch.zeros(THROUGHPUT_BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
        seconds = statistics.median(timed(lambda: model(batch), 1, 3))
    shapes = {k: tuple(v.shape[1:]) for k, v in outputs.items()}
    return model, shapes, seconds


def build_method(entry, record: dict, num_classes: int, shapes: dict):
    """The record's method, untrained (fitted on random inputs when closed-form)."""
    from ..run.inputs import input_names
    names = input_names(entry.cls)
    spec = record["spec"]
    size = spec.get("input_size", 224)
    method_shapes = {n: (3, size, size) if n == "images" else shapes[n] for n in names}
    torch.manual_seed(0)
    method = entry.cls(bits=record["bits"], num_classes=num_classes, input_shapes=method_shapes,
                       **(spec.get("hparams") or {}))
    method.eval()
    if not entry.cls.trainable:
        n = max(256, 4 * record["bits"])
        inputs = {k: torch.randn((n,) + tuple(s)) for k, s in method_shapes.items()}
        with torch.no_grad():
            method.fit(inputs, torch.randint(num_classes, (n,)) if entry.cls.supervised else None)
    return method, method_shapes


def encode_timings(method, backbone, shapes: dict, size: int, batch_seconds: float) -> dict:
    one = torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    batch = {k: torch.randn((THROUGHPUT_BATCH,) + tuple(s)) for k, s in shapes.items()}

    def end_to_end():
        out = backbone(one)
        method.encode({k: (one if k == "images" else out[k]) for k in shapes})
    with torch.inference_mode():
        p50, p95 = percentiles(timed(end_to_end))
        head = statistics.median(timed(lambda: method.encode(batch), 1, 3))
    return {"encode_latency_ms": p50, "encode_latency_p95_ms": p95,
            "encode_throughput": THROUGHPUT_BATCH / (batch_seconds + head)}


def search_timings(db: np.ndarray, queries: np.ndarray, prefix: str) -> dict:
    from .search import BinaryIndex, query_latency
    index = BinaryIndex(db)
    found = query_latency(index, queries, min(SEARCH_K, len(db)), min_queries=50,
                          max_queries=200, budget_s=0.5)
    return {f"{prefix}_ms": found["median_ms"], f"{prefix}_p95_ms": found["p95_ms"]}


def codes_for(record: dict, results: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(database codes, query codes, "run" | "random")."""
    path = Path(results) / "runs" / record["run_id"] / "codes.npz" if results else None
    if path is not None and path.is_file():
        with np.load(path) as codes:
            return codes["db_codes"], codes["query_codes"], "run"
    rng = np.random.default_rng(0)
    size = int((record.get("efficiency") or {}).get("search_db") or 1000)
    return (rng.integers(0, 2, (size, record["bits"]), dtype=np.uint8),
            rng.integers(0, 2, (200, record["bits"]), dtype=np.uint8), "random")


def replicated(db: np.ndarray, n: int = SCALE_DB) -> np.ndarray:
    return np.resize(db, (n, db.shape[1]))


def num_classes_of(record: dict, cache: dict, data_root) -> int:
    """Classes of the record's dataset (the head sizes of supervised methods)."""
    name = record["dataset"]
    if name not in cache:
        from ..data import build_dataset
        base, _, first = name.partition("-first")
        try:
            classes = build_dataset(base, data_root=data_root).num_classes
        except BenchmarkError as exc:
            raise BenchmarkError(f"profile needs dataset {base!r} for its class count: {exc}") from None
        cache[name] = min(classes, int(first)) if first.isdigit() else classes
    return cache[name]


def _same_counts(record: dict, fresh: dict) -> bool:
    old = record.get("efficiency") or {}
    return all(old.get(k) in (None, fresh[k]) for k in ("params", "macs", "params_train_only"))


def profile_record(record: dict, entry, num_classes: int, results: Path | None,
                   threads: int) -> tuple[dict, bool]:
    """(the record with re-measured timings, whether its parameter and MAC counts match)."""
    spec = record["spec"]
    size = spec.get("input_size", 224)
    load_before = os.getloadavg()[0]
    backbone, shapes, batch_seconds = backbone_of(spec["backbone"], size)
    method, method_shapes = build_method(entry, record, num_classes, shapes)
    counts = profile_inference(method, method_shapes, spec["backbone"], size)
    db, queries, source = codes_for(record, results)
    eff = dict(record.get("efficiency") or {})
    at_run = eff.get("at_run")  # profiled before: the run's own timings are kept there
    if at_run is None:
        at_run = {k: eff.pop(k) for k in TIMINGS if k in eff and k != "search_db"}
        at_run["hardware"] = (record.get("provenance") or {}).get("hardware")
    eff.update(encode_timings(method, backbone, method_shapes, size, batch_seconds))
    eff.update(search_timings(db, queries, "search_latency"))
    eff.update(search_timings(replicated(db), queries, "search_1m_latency"))
    eff.update(search_db=len(db), search_codes=source, at_run=at_run,
               profile={"timer": f"perf_counter, {WARMUP} warm-ups, {REPEATS} repeats",
                        "threads": threads, "hardware": hardware_id(),
                        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
    return dict(record, efficiency=eff), _same_counts(record, counts)


def profile_all(records: list[dict], results: Path | None, data_root=None, threads: int = 1,
                log=print) -> list[dict]:
    """Every ok record re-profiled (others unchanged), in this one process."""
    from registry import load_plugins
    torch.set_num_threads(threads)
    methods, classes, out = load_plugins().methods, {}, []
    for record in records:
        if record.get("status", "ok") != "ok" or record["method"] not in methods:
            if record.get("status", "ok") == "ok":
                log(f"  {record['run_id']} {record['method']}: not registered here, kept as is")
            out.append(record)
            continue
        try:
            fresh, same = profile_record(record, methods[record["method"]],
                                         num_classes_of(record, classes, data_root), results, threads)
        except BenchmarkError:
            raise
        except Exception as exc:  # noqa: BLE001 - one method that cannot be built is reported
            log(f"  {record['run_id']} {record['method']}: not re-profiled ({type(exc).__name__}: {exc})")
            out.append(record)
            continue
        eff = fresh["efficiency"]
        log(f"  {record['run_id']} {record['method']:>12} {record['bits']:>3}b: encode "
            f"{eff['encode_latency_ms']:.1f} ms (p95 {eff['encode_latency_p95_ms']:.1f}), search "
            f"{eff['search_latency_ms']:.3f} ms, @1M {eff['search_1m_latency_ms']:.3f} ms"
            + ("" if same else "; PARAMS/MACS DIFFER from the record (kept the record's)"))
        out.append(fresh)
    return out


def cmd_profile(args) -> int:
    """``profile --results DIR`` updates the store; ``profile --records FILE`` the export."""
    from ..store.records import dumps_records, read_records
    from ..store.sqlite import ResultStore
    if args.threads < 1:
        raise BenchmarkError(f"--threads must be at least 1, got {args.threads}")
    if args.records:
        path = Path(args.records)
        records = profile_all(read_records(path), None, args.data_root, args.threads)
        path.write_text(dumps_records(records), encoding="utf-8")
        print(f"re-profiled {sum('profile' in r['efficiency'] for r in records)} records -> {path}")
        return 0
    store_path = Path(args.results) / "results.sqlite"
    if not store_path.is_file():
        raise BenchmarkError(f"no result store at {store_path}")
    with ResultStore(store_path) as store:
        records = profile_all(store.records("ok"), Path(args.results), args.data_root, args.threads)
        for record in records:
            store.put(record)
    print(f"re-profiled {sum('profile' in r['efficiency'] for r in records)} runs in {store_path}")
    return 0
