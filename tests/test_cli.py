"""End to end through ``python -m benchmark`` in subprocesses, as a user runs it."""
import json
import sqlite3

import numpy as np
import pytest

from tests.conftest import DATA_ROOT, listed_methods, make_plugin_dist, needs_cub100, run_cli

TINY = ["--dataset", "synthetic-fg", "--input-size", "64", "--epochs", "3", "--no-progress"]

BROKEN_IMPORT = "raise ImportError('needs a package that is not installed')\n"
RAISES_MID_RUN = """
from benchmark.method import HashMethod
from registry import hookimpl
import torch

class Exploding(HashMethod):
    name = "exploding"
    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)
    def encode(self, inputs):
        return self.head(inputs["pooled"])
    def loss(self, batch):
        raise RuntimeError("boom in epoch 0")

class Interrupted(Exploding):
    name = "interrupted"
    def loss(self, batch):
        raise KeyboardInterrupt

@hookimpl
def benchmark_methods():
    return [Exploding, Interrupted]
"""


def rows(out):
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute("SELECT method, bits, status, error, distribution FROM runs "
                          "ORDER BY method, bits").fetchall()


@pytest.fixture
def plugin_site(tmp_path):
    site = tmp_path / "site"
    make_plugin_dist(site, "broken-plugin", "broken", "broken_plugin", BROKEN_IMPORT, "0.3")
    make_plugin_dist(site, "exploding-plugin", "exploding", "exploding_plugin", RAISES_MID_RUN, "2.1")
    return {"PYTHONPATH": str(site)}


def test_list_shows_builtins_and_failed_plugins(plugin_site):
    result = run_cli("list", env=plugin_site)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["| method | supervised | inputs | provided by |", "|---|---|---|---|"]
    methods = listed_methods(result.stdout)
    assert methods["dsh"] == ["dsh", "yes", "pooled", "fghashbench 0.1.0 (plugin dsh)"]
    assert methods["lsh"][1] == "no"
    assert methods["exploding"][3].startswith("exploding-plugin 2.1")
    failed = [l for l in lines if l.startswith("failed plugin broken")]
    assert failed and "ImportError: needs a package that is not installed" in failed[0]


def test_default_grid_lists_registered_builtins_without_ablation_variants():
    from benchmark.grid.defaults import DEFAULT_GRID
    result = run_cli("list", "--default-grid", "--names")
    assert result.returncode == 0, result.stderr
    names = result.stdout.strip().split(",")
    assert names == list(DEFAULT_GRID["methods"])  # every one registered, in grid order
    builtin = run_cli("list", "--builtin", "--names").stdout.strip().split(",")
    assert set(names) < set(builtin) and "cmbh-b" in builtin and "cmbh-b" not in names


def test_asking_for_a_failed_plugin_records_its_runs_failed(plugin_site, tmp_path):
    result = run_cli("run", "--methods", "broken", *TINY, "--bits", "8", "--out", tmp_path,
                     env=plugin_site)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert rows(tmp_path) == [("broken", 8, "failed", "plugin 'broken' failed to load: "
                               "ImportError: needs a package that is not installed", "broken-plugin")]


def test_run_skip_rerun_and_leaderboard(tmp_path, cache_dir):
    out = tmp_path / "results"
    args = ["run", "--methods", "lsh,itq,dsh", *TINY, "--bits", "8,16", "--seeds", "0,1",
            "--out", out, "--cache-dir", cache_dir]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    records = rows(out)
    assert len(records) == 12 and all(r[2] == "ok" for r in records)
    # codes saved for every run, 0/1 uint8 with the run's bit length
    with sqlite3.connect(out / "results.sqlite") as db:
        stored = db.execute("SELECT run_id, bits, metrics, spec FROM runs").fetchall()
    for run_id, bits, metrics, spec in stored:
        codes = np.load(out / "runs" / run_id / "codes.npz")
        assert codes["query_codes"].dtype == np.uint8 and codes["query_codes"].shape[1] == bits
        assert set(np.unique(codes["db_codes"])) <= {0, 1}
        assert len(codes["query_labels"]) == len(codes["query_codes"])
        assert 0 < json.loads(metrics)["map"] <= 1
        assert json.loads(spec)["distribution"] == "fghashbench"
    second = run_cli(*args)
    assert second.returncode == 0
    assert "12 already recorded, 0 to run" in second.stdout
    board = tmp_path / "boards"
    assert run_cli("leaderboard", "--results", out, "--out", board).returncode == 0
    text = (board / "synthetic-fg.md").read_text()
    assert "| Method | mAP@8 bits | mAP@16 bits |" in text
    assert len([l for l in text.splitlines() if l.startswith("| ") and "fghashbench" in l]) == 3
    check = run_cli("leaderboard", "--results", out, "--out", board, "--check")
    assert check.returncode == 0 and "up to date" in check.stdout
    (board / "synthetic-fg.md").write_text(text.replace("lsh", "LSH"))
    stale = run_cli("leaderboard", "--results", out, "--out", board, "--check")
    assert stale.returncode == 1 and "stale" in stale.stdout


def test_plugin_raising_mid_run_is_recorded_and_grid_goes_on(plugin_site, tmp_path, cache_dir):
    out = tmp_path / "results"
    result = run_cli("run", "--methods", "exploding,lsh", *TINY, "--bits", "8", "--out", out,
                     "--cache-dir", cache_dir, env=plugin_site)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert rows(out) == [("exploding", 8, "failed", "RuntimeError: boom in epoch 0", "exploding-plugin"),
                         ("lsh", 8, "ok", None, "fghashbench")]
    # --overwrite missing retries the failed run only
    again = run_cli("run", "--methods", "exploding,lsh", *TINY, "--bits", "8", "--out", out,
                    "--cache-dir", cache_dir, env=plugin_site)
    assert "1 already recorded, 1 to run" in again.stdout


def test_interrupted_run_leaves_no_partial_row(plugin_site, tmp_path, cache_dir):
    out = tmp_path / "results"
    result = run_cli("run", "--methods", "lsh,interrupted", *TINY, "--bits", "8", "--out", out,
                     "--cache-dir", cache_dir, env=plugin_site)
    assert result.returncode == 130 and "interrupted" in result.stderr
    assert rows(out) == [("lsh", 8, "ok", None, "fghashbench")]
    assert not list(out.glob("runs/*/codes.tmp.npz"))


def test_bad_protocol_values_are_one_line_errors(tmp_path):
    for args, message in ((["--bits", "0,12"], "bits must be positive"),
                          (["--regime", "sideways"], "unknown regime"),
                          (["--methods", "lsh,nope"], "unknown method 'nope'")):
        full = ["run", "--methods", "lsh", *TINY, "--out", tmp_path, *args]
        result = run_cli(*full)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@needs_cub100
def test_cub100_dsh_and_itq_beat_lsh(tmp_path, cache_dir):
    """Real images, pretrained backbone: the first 10 species of cub100 at 128 px."""
    out = tmp_path / "results"
    result = run_cli("run", "--methods", "lsh,itq,dsh", "--dataset", "cub100", "--data-root",
                     DATA_ROOT, "--max-classes", "10", "--input-size", "128", "--bits", "12,32",
                     "--out", out, "--cache-dir", cache_dir, "--no-progress")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        found = {(m, b): json.loads(x)["map"] for m, b, x in
                 db.execute("SELECT method, bits, metrics FROM runs WHERE status = 'ok'")}
    assert len(found) == 6
    for bits in (12, 32):
        assert found[("dsh", bits)] > found[("lsh", bits)] + 0.05, found
        assert found[("itq", bits)] > found[("lsh", bits)], found
