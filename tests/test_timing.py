"""provenance.timing (benchmark/run/timing.py) and profiles measured once per method
configuration (benchmark/eval/profiling.py)."""
import numpy as np

from benchmark.cli import main
from benchmark.eval import profiling
from benchmark.run.timing import STEPS, RunTiming
from benchmark.store.sqlite import ResultStore

TINY = ["--dataset", "synthetic-fg", "--max-classes", "4", "--input-size", "32",
        "--no-progress"]


def test_run_timing_adds_steps_and_keeps_epochs():
    timing = RunTiming()
    seen = []
    log = timing.epoch_log(seen.append)
    with timing.step("train"):
        log({"seconds": 0.25})
        log({"seconds": 0.5})
    timing.add("train", 1.0)
    facts = timing.facts()
    assert facts["train_epochs"] == [0.25, 0.5] and len(seen) == 2
    assert facts["train"] >= 1.0 and "encode" not in facts


def test_records_carry_the_breakdown_and_seeds_share_one_profile(tmp_path, cache_dir, monkeypatch):
    calls = []
    measure = profiling.profile_inference
    monkeypatch.setattr(profiling, "profile_inference", lambda *a: calls.append(1) or measure(*a))
    profiling._MEASURED.clear()
    out = tmp_path / "out"
    assert main(["run", "--methods", "dsh,itq", *TINY, "--bits", "8", "--seeds", "0,1",
                 "--hparams", "dsh.epochs=3", "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    with ResultStore(out / "results.sqlite") as store:
        records = store.records()
    assert len(records) == 4 and len(calls) == 2  # one profile per method, both seeds
    for record in records:
        timing = record["provenance"]["timing"]
        assert set(STEPS) <= set(timing), timing
        assert all(timing[s] >= 0 for s in STEPS)
        epochs = timing["train_epochs"]
        assert len(epochs) == (3 if record["method"] == "dsh" else 0)
        assert sum(epochs) <= timing["train"] + 1e-3
        assert timing["train"] + timing["encode"] <= record["wall_time"] + 1e-3
    by_seed = {(r["method"], r["seed"]): r for r in records}
    for method in ("dsh", "itq"):
        first, second = by_seed[method, 0], by_seed[method, 1]
        reused = [r for r in (first, second) if r["efficiency"].get("profile_reused")]
        assert len(reused) == 1
        fresh = next(r for r in (first, second) if r not in reused)
        shared = {k: v for k, v in reused[0]["efficiency"].items() if k != "profile_reused"}
        assert shared == fresh["efficiency"]
        assert np.isfinite(shared["encode_latency_ms"])


def test_runs_keep_freed_memory_on_glibc_so_a_freed_block_is_reused():
    import ctypes
    import platform
    import resource

    from benchmark.run.process import keep_freed_memory
    if platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mmapped by default

    def write_and_free():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    write_and_free()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        write_and_free()
    # without the setting every block is faulted in again: 163,850 faults (100% of the pages)
    pages = 10 * size // resource.getpagesize()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < pages // 10
