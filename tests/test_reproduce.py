"""``reproduce`` re-runs committed records from their specs: the same code gives the same
numbers (closed-form to 1e-6), a corrupted committed number is caught (exit 1), and a
record whose method code changed since it was made is refused (exit 2)."""
import json

import pytest

from tests.conftest import make_plugin_dist, run_cli

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
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 3  # header + lsh, itq, dsh at seed 0
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-1] == "ok" and float(cells[6]) == 0.0, line
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
    verdicts = {line.split("|")[1].strip(): line.split("|")[-2].strip()
                for line in result.stdout.splitlines() if line.startswith("| ") and "method" not in line}
    assert verdicts == {"lsh": "DIFFERS", "itq": "ok"}


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
