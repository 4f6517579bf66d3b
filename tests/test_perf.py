"""`python -m benchmark perf`, its reference implementations, and the efficiency record
(profiling + leaderboard columns). No timing thresholds: timings depend on the machine."""
import re

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.eval import metrics as evaluation, perf, profiling
from benchmark.report import tables as leaderboard
from benchmark.method import HashMethod
from tests.conftest import run_cli


def test_perf_quick_prints_every_section_and_exact_values():
    done = run_cli("perf", "--quick", timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for heading in ("1. mAP@all", "2. Scale", "3. Exact top-100 search", "ratios", "the thesis"):
        assert heading in out
    # the sort-free mAP equals the stable-sort reference (same number, printed to 6 places)
    stable = re.search(r"stable-sort reference \(vectorised\)\s+\S+ s\s+mAP (\S+)", out).group(1)
    ours = re.search(r"benchmark.evaluation \(sort-free\)\s+\S+ s\s+mAP (\S+)", out).group(1)
    assert stable == ours
    assert float(re.search(r"AP difference from the stable-sort reference (\S+)", out).group(1)) < 1e-12
    assert re.search(r"peak RSS \d+ MiB", out)
    assert_ratios_follow_the_printed_times(out)


def consistent(ratio: float, top: float, bottom: float, top_step: float, bottom_step: float,
               ratio_step: float = 0.1) -> bool:
    """Could ``ratio`` (printed to ``ratio_step``) be top / bottom for values printed as
    ``top`` and ``bottom`` (to ``top_step`` / ``bottom_step``)?"""
    if bottom - bottom_step / 2 <= 0:
        return True  # a time printed as zero bounds nothing
    low = (top - top_step / 2) / (bottom + bottom_step / 2)
    high = (top + top_step / 2) / (bottom - bottom_step / 2)
    return low - ratio_step / 2 <= ratio <= high + ratio_step / 2


def assert_ratios_follow_the_printed_times(out: str) -> None:
    """Every ratio ``perf`` prints is the ratio of the times and rates it printed."""
    times = {name: float(re.search(rf"{name}\s+(\S+) s", out).group(1)) for name in
             ("DeepHash-style per-query argsort loop", "stable-sort reference \\(vectorised\\)",
              "benchmark.evaluation \\(sort-free\\)")}
    loop, stable, ours = times.values()
    speed = re.search(r"speed-up (\S+)x vs the DeepHash-style loop, (\S+)x vs the stable-sort", out)
    assert consistent(float(speed.group(1)), loop, ours, 1e-3, 1e-3), (speed.group(0), times)
    assert consistent(float(speed.group(2)), stable, ours, 1e-3, 1e-3), (speed.group(0), times)
    table = {(name.strip(), int(db.replace(",", ""))): (float(ms), float(qps.replace(",", "")))
             for name, db, ms, qps in re.findall(
                 r"^   (\S.*?)\s+\d+\s+([\d,]+)\s+([\d.]+)\s+[\d.]+\s+([\d,]+)$", out, re.M)}
    lines = re.findall(r"^\s+([\d,]+): padded vs un-padded (\S+)x / (\S+)x((?:; binary 48b padded "
                       r"vs float \d+-d \S+x / \S+x)*)$", out, re.M)
    assert lines and table, out
    largest = []
    for db, lat, rate, floats in lines:
        n = int(db.replace(",", ""))
        (pad_ms, pad_qps), (raw_ms, raw_qps) = table[("48 bits padded to 64", n)], table[("48 bits un-padded", n)]
        assert consistent(float(lat), raw_ms, pad_ms, 1e-3, 1e-3) and \
            consistent(float(rate), pad_qps, raw_qps, 1, 1), (db, lat, rate, table)
        for dim, lat_f, rate_f in re.findall(r"float (\d+)-d (\S+)x / (\S+)x", floats):
            float_ms, float_qps = table[(f"float {dim}-d", n)]
            assert consistent(float(lat_f), float_ms, pad_ms, 1e-3, 1e-3), (db, dim, lat_f, table)
            assert consistent(float(rate_f), pad_qps, float_qps, 1, 1), (db, dim, rate_f, table)
            largest.append((float(lat_f), float(rate_f)))
    found = re.search(r"largest in this run: (\d+)x per-query latency .*?, (\d+)x batch throughput", out)
    assert abs(int(found.group(1)) - max(l for l, _ in largest)) <= 0.55
    assert abs(int(found.group(2)) - max(r for _, r in largest)) <= 0.55


def test_perf_rejects_bad_threads():
    done = run_cli("perf", "--quick", "--threads", "0")
    assert done.returncode == 2 and done.stderr.strip() == "error: --threads must be at least 1, got 0"


def test_reference_loop_and_stable_sort_agree_without_ties():
    # one query, database at pairwise different distances: every ranking is the same
    bits = 8
    q = np.zeros((1, bits), dtype=np.uint8)
    d = np.array([[1] * k + [0] * (bits - k) for k in (3, 0, 5, 1, 8, 2)], dtype=np.uint8)
    ql, dl = np.array([1]), np.array([1, 0, 1, 1, 0, 0])
    loop = perf.map_deephash_loop(q, d, ql, dl)
    assert loop == pytest.approx(perf.ap_stable_sort(q, d, ql, dl).mean(), abs=1e-15)
    # ranking: item 1 (distance 0), 3 (1, relevant), 5 (2), 0 (3, relevant), 2 (5, relevant), 4 (8)
    assert loop == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert evaluation.evaluate_codes(q, d, ql, dl)["map"] == pytest.approx(loop, abs=1e-15)


def test_bench_map_reports_identical_values():
    result = perf.bench_map(60, 90, 16, 5)
    assert result["ours_map"] == pytest.approx(result["stable_map"], abs=1e-12)
    assert result["max_ap_difference"] < 1e-12


class WithAuxiliaryHead(HashMethod):
    """A hash layer used by encode, a classifier used only by the loss, a fixed buffer."""
    name = "aux-toy"

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.hash = nn.Linear(input_shapes["pooled"][0], bits)
        self.classifier = nn.Linear(bits, num_classes)
        self.register_buffer("scale", torch.ones(bits))

    def loss(self, batch):
        h = self.hash(batch["inputs"]["pooled"])
        return {"ce": nn.functional.cross_entropy(self.classifier(h), batch["labels"])}

    def encode(self, inputs):
        return torch.tanh(self.hash(inputs["pooled"])) * self.scale


def test_train_only_parameters_are_those_encode_never_touches():
    method = WithAuxiliaryHead(12, 5, {"pooled": (20,)})
    assert profiling.encode_tensors(method, {"pooled": torch.zeros(2, 20)}) == {
        "hash.weight", "hash.bias", "scale"}
    cost = profiling.profile_inference(method, {"pooled": (20,)}, "efficientnet_lite0", 32)
    assert cost["params_method"] == 20 * 12 + 12 + 12
    assert cost["params_train_only"] == 12 * 5 + 5
    assert cost["params"] == cost["params_backbone"] + cost["params_method"]
    assert cost["macs_method"] == 20 * 12  # the linear layer (FMA = 1); tanh and scale are free


def test_profile_run_adds_timings():
    method = WithAuxiliaryHead(12, 5, {"pooled": (1280,)})
    rng = np.random.default_rng(0)
    out = profiling.profile_run(method, {"pooled": (1280,)}, "efficientnet_lite0", 32,
                                rng.integers(0, 2, (50, 12), dtype=np.uint8),
                                rng.integers(0, 2, (5, 12), dtype=np.uint8))
    assert out["search_db"] == 50
    assert out["encode_latency_ms"] > 0 and out["encode_throughput"] > 0 and out["search_latency_ms"] > 0


def record(method, hardware, efficiency):
    protocol = {"noise": None}
    return {"method": method, "bits": 32, "seed": 0, "metrics": {"map": 0.5},
            "efficiency": efficiency, "distribution": "d", "version": "1",
            "spec": {"protocol": protocol}, "provenance": {"hardware": hardware}}


EFFICIENCY = {"params": 4e6, "macs": 4e8, "params_train_only": 65_000, "encode_latency_ms": 12.34,
              "encode_throughput": 80.0, "search_latency_ms": 0.0123, "search_db": 2999}


def test_leaderboard_shows_timings_only_for_one_machine():
    same = leaderboard.render_table([record("a", "cpu A", EFFICIENCY), record("b", "cpu A", EFFICIENCY)])
    assert "MACs (G, FMA=1)" in same.splitlines()[0]
    assert "| 0.065 | 12.3 | 80.0 | 0.012 |" in same
    assert "timings measured on cpu A" in same and "2,999 codes" in same
    mixed = leaderboard.render_table([record("a", "cpu A", EFFICIENCY), record("b", "cpu B", EFFICIENCY)])
    assert "| 0.065 | mixed hw | mixed hw | mixed hw |" in mixed
    assert "2 machines (cpu A; cpu B)" in mixed
    old = leaderboard.render_table([record("a", "cpu A", {"params": 4e6, "macs": 4e8})])
    assert "| 4.000 | 0.400 | - | - | - | - |" in old
