"""``reproduce`` re-runs committed records from their specs: the same code gives the same
numbers (closed-form to 1e-6), a corrupted committed number is caught (exit 1), a record
made on other hardware is re-run with its thread count and judged against the spread of two
seeds, and a record whose method code changed since it was made is refused (exit 2)."""
import json
import math

import pytest

from benchmark.report.stats import mean_halfwidth
from benchmark.run.reproduce import CLOSED_FORM_TOLERANCE, TRAINED_TOLERANCE, tolerance
from tests.conftest import make_plugin_dist, run_cli, table_rows

TINY = ["--dataset", "synthetic-fg", "--max-classes", "6", "--input-size", "32", "--epochs", "2",
        "--no-progress"]
EDITABLE = """
import torch
from benchmark.method import HashMethod
from registry import hookimpl

class Edited(HashMethod):
    name = "edited"
    trainable = False
    SCALE = 1.0
    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        generator = torch.Generator().manual_seed(7)
        self.register_buffer("projection", torch.randn(input_shapes["pooled"][0], bits,
                                                       generator=generator))
    def fit(self, inputs, labels):
        pass
    def encode(self, inputs):
        return self.SCALE * inputs["pooled"] @ self.projection

@hookimpl
def register_methods(register):
    register(Edited)
"""


@pytest.fixture(scope="module")
def committed(tmp_path_factory, cache_dir):
    """A small grid run and exported like the committed leaderboards; dsh's settings come
    from a tuned config, as the default grid's do (its selection rule is in the spec)."""
    work = tmp_path_factory.mktemp("reproduce")
    config = work / "tuned.yaml"
    config.write_text("hparams: {dsh: {alpha: 0.02, lr: 0.05}}\n"
                      "selection: {dsh: {objective: map_tie_aware, trials: 2, best_value: 0.5}}\n")
    result = run_cli("run", "--methods", "lsh,itq,dsh", *TINY, "--bits", "8", "--seeds", "0,1",
                     "--out", work / "results", "--cache-dir", cache_dir, "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    board = run_cli("leaderboard", "--results", work / "results", "--out", work / "board")
    assert board.returncode == 0, board.stderr
    records = [json.loads(line) for line in (work / "board" / "records.jsonl").open()]
    assert all(r["spec"].get("selection", {}).get("trials") == (2 if r["method"] == "dsh" else None)
               for r in records)
    return work / "board" / "records.jsonl"


def test_reproduce_matches_and_prints_the_table(committed, tmp_path, cache_dir):
    result = run_cli("reproduce", "--records", committed, "--seeds", "0", "--out", tmp_path / "re",
                     "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert sorted(rows) == ["dsh", "itq", "lsh"]  # seed 0
    for row in rows.values():
        assert row[-2:] == ["same", "ok"] and float(row[6]) == 0.0, row
    assert "committed on:" in result.stdout and "reproduced on:" in result.stdout
    assert "3 of 3 within tolerance" in result.stdout


def test_a_corrupted_closed_form_number_fails(committed, tmp_path, cache_dir):
    records = [json.loads(line) for line in committed.read_text().splitlines()]
    lsh = next(r for r in records if r["method"] == "lsh" and r["seed"] == 0)
    lsh["metrics"]["map_tie_aware"] += 1e-4  # far below any trained tolerance
    corrupted = tmp_path / "records.jsonl"
    corrupted.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_cli("reproduce", "--records", corrupted, "--methods", "lsh,itq", "--seeds", "0",
                     "--out", tmp_path / "re", "--cache-dir", cache_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert {name: row[-1] for name, row in table_rows(result.stdout).items()} == \
        {"lsh": "DIFFERS", "itq": "ok"}


def test_tolerance_is_the_mean_on_the_same_hardware_and_two_draws_on_other():
    cell = [0.694753, 0.693366, 0.686014, 0.67945, 0.680648]  # dsh 12 bits, seeds 0-4
    half = mean_halfwidth(cell)[1]
    assert math.isclose(half, 0.008754, rel_tol=1e-3)
    assert tolerance(True, cell, same_hardware=True) == half
    # two draws: t * s * sqrt(2) = half * sqrt(2 n)
    assert math.isclose(tolerance(True, cell, same_hardware=False), half * math.sqrt(10))
    assert tolerance(False, cell, same_hardware=False) == CLOSED_FORM_TOLERANCE
    assert tolerance(True, [0.5], same_hardware=False) == TRAINED_TOLERANCE
    assert tolerance(True, [0.5, 0.5001], same_hardware=True) == TRAINED_TOLERANCE


def test_a_record_from_other_hardware_runs_with_its_threads(committed, tmp_path, cache_dir):
    """The CPU is renamed, the thread count kept (torch's thread count moves even itq's codes:
    its eigh and svd reduce in another order); the re-run's environment asks for another."""
    records = [json.loads(line) for line in committed.read_text().splitlines()]
    threads = {r["provenance"]["hardware"].rsplit(" ", 1)[1] for r in records}
    assert len(threads) == 1, threads
    for record in records:
        record["provenance"]["hardware"] = f"Some Other CPU x64 {next(iter(threads))}"
    moved = tmp_path / "records.jsonl"
    moved.write_text("".join(json.dumps(r) + "\n" for r in records))
    other = "2" if threads == {"threads=1"} else "1"
    result = run_cli("reproduce", "--records", moved, "--seeds", "0", "--out", tmp_path / "re",
                     "--cache-dir", cache_dir, env={"OMP_NUM_THREADS": other})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split("reproduced on: ")[1].splitlines()[0].endswith(next(iter(threads)))
    rows = table_rows(result.stdout)
    assert {row[8] for row in rows.values()} == {"other"}
    dsh = [r["metrics"]["map_tie_aware"] for r in records if r["method"] == "dsh"]
    assert tolerance(True, dsh, False) > tolerance(True, dsh, True)  # the two bounds differ here
    assert float(rows["dsh"][7]) == float(f"{100 * tolerance(True, dsh, False):.4g}")
    assert math.isclose(float(rows["lsh"][7]), 100 * CLOSED_FORM_TOLERANCE)


def test_a_method_whose_code_changed_is_refused(tmp_path, cache_dir):
    site = make_plugin_dist(tmp_path / "site", "edited-plugin", "edited", "edited_plugin", EDITABLE)
    env = {"PYTHONPATH": str(site)}
    run = run_cli("run", "--methods", "edited", *TINY, "--bits", "8", "--out", tmp_path / "results",
                  "--cache-dir", cache_dir, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    board = run_cli("leaderboard", "--results", tmp_path / "results", "--out", tmp_path / "board", env=env)
    assert board.returncode == 0, board.stderr
    records = tmp_path / "board" / "records.jsonl"
    same = run_cli("reproduce", "--records", records, "--out", tmp_path / "re1", "--cache-dir",
                   cache_dir, env=env)
    assert same.returncode == 0, same.stdout + same.stderr
    (site / "edited_plugin.py").write_text(EDITABLE.replace("SCALE = 1.0", "SCALE = 2.0"))
    refused = run_cli("reproduce", "--records", records, "--out", tmp_path / "re2", "--cache-dir",
                      cache_dir, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: method 'edited': its code or defaults changed")
    assert len(refused.stderr.strip().splitlines()) == 1
    allowed = run_cli("reproduce", "--records", records, "--out", tmp_path / "re3", "--cache-dir",
                      cache_dir, "--allow-code-change", env=env)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr  # scaling keeps every sign
