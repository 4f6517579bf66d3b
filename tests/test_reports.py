"""Reports people read: failed runs visible everywhere (page, index, `runs`, `show`, log),
per-run logs, `profile`, escaped names, variants never merged, intervals and marks."""
import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from benchmark.cli import main
from benchmark.report import files as exports
from benchmark.report.markdown import confined, escape, safe_name
from benchmark.report.tables import render_table
from benchmark.store.sqlite import ResultStore
from tests.conftest import make_plugin_dist, run_cli
from tests.test_cli import RAISES_MID_RUN, TINY
from tests.test_leaderboards import fake_record


@pytest.fixture(scope="module")
def failing_grid(tmp_path_factory):
    """lsh, dsh and a plugin that raises in its loss, 8 bits, seeds 0 and 1 (synthetic-fg)."""
    root = tmp_path_factory.mktemp("failing-grid")
    site = make_plugin_dist(root / "site", "exploding-plugin", "exploding", "exploding_plugin",
                            RAISES_MID_RUN, "2.1")
    env = {"PYTHONPATH": str(site)}
    out = root / "results"
    made = run_cli("run", "--methods", "exploding,lsh,dsh", *TINY, "--bits", "8", "--seeds", "0,1",
                   "--out", out, "--cache-dir", root / "cache", env=env)
    assert made.returncode == 1, made.stderr  # a failed run: exit 1, every other run kept
    return out, env


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m benchmark ARGS`` in this process (no torch start-up per call)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_failing_plugin_is_in_the_page_index_runs_show_and_log(failing_grid, tmp_path, capsys):
    out, _ = failing_grid
    board = tmp_path / "board"
    assert cli(capsys, "leaderboard", "--results", out, "--out", board)[0] == 0
    page = (board / "synthetic-fg.md").read_text()
    failed = [line for line in page.splitlines() if line.startswith("| exploding |")]
    assert len(failed) == 2 and all("RuntimeError: boom in epoch 0" in line for line in failed)
    assert "`python -m benchmark run --methods exploding --dataset synthetic-fg --bits 8 --seeds 0" in page
    assert "(2 failed, 0 degenerate" in page
    index = (board / "README.md").read_text()
    assert "Runs: 4 ok (0 flagged degenerate), 2 failed" in index
    assert "| failed runs | 2; exploding 8b seed 0: RuntimeError: boom in epoch 0;" in index
    # the failed runs travel in failures.jsonl, so --records regenerates the same bytes
    assert len((board / "failures.jsonl").read_text().splitlines()) == 2
    code, stdout, _ = cli(capsys, "leaderboard", "--records", board / "records.jsonl", "--out", board, "--check")
    assert code == 0 and "leaderboards up to date" in stdout
    code, listing, _ = cli(capsys, "runs", "--results", out, "--status", "failed")
    rows = [line for line in listing.splitlines() if line.startswith("| ") and "| id |" not in line]
    assert code == 0 and len(rows) == 2 and all("| exploding | 8 |" in r for r in rows)
    assert "| failed |" in rows[0] and "2 of 6 runs" in listing
    run_id = rows[0].split("|")[1].strip()
    code, shown, _ = cli(capsys, "show", run_id[:8], "--results", out)
    assert code == 0 and "status failed: RuntimeError: boom in epoch 0" in shown
    assert "Traceback (most recent call last):" in shown
    log = (out / "runs" / run_id / "log.txt").read_text()
    assert 'raise RuntimeError("boom in epoch 0")' in log and log.startswith(f"run {run_id}: exploding")
    code, _, err = cli(capsys, "show", "ffffffff", "--results", out)
    assert code == 2 and "no run with id" in err


def test_an_ok_run_logs_its_epochs_loss_components_and_spec(failing_grid, capsys):
    out, _ = failing_grid
    listing = cli(capsys, "runs", "--results", out, "--method", "dsh")[1]
    run_id = next(l for l in listing.splitlines() if "| dsh |" in l).split("|")[1].strip()
    lines = (out / "runs" / run_id / "log.txt").read_text().splitlines()
    spec = json.loads(lines[1].removeprefix("spec: "))
    assert spec["method"] == "dsh" and spec["bits"] == 8
    epochs = [l for l in lines if l.startswith("epoch ")]
    assert len(epochs) == 3 and all(re.search(r"\(pairwise [\d.e-]+, quantisation [\d.e-]+\) in [\d.]+ s", l)
                                    for l in epochs)
    assert lines[-1].startswith("status: ok; map_tie_aware ")


def test_profile_re_measures_in_one_process_and_the_table_says_so(failing_grid, tmp_path, capsys):
    out, _ = failing_grid
    code, stdout, err = cli(capsys, "profile", "--results", out)
    assert code == 0, err
    assert "re-profiled 4 runs" in stdout and "DIFFER" not in stdout
    first = {r["run_id"]: r["efficiency"]["at_run"] for r in ResultStore(out / "results.sqlite").records("ok")}
    assert cli(capsys, "profile", "--results", out)[0] == 0  # a second time keeps the run's own
    assert {r["run_id"]: r["efficiency"]["at_run"]
            for r in ResultStore(out / "results.sqlite").records("ok")} == first
    board = tmp_path / "board"
    assert cli(capsys, "leaderboard", "--results", out, "--out", board)[0] == 0
    records = [json.loads(l) for l in (board / "records.jsonl").read_text().splitlines()]
    for r in records:
        eff = r["efficiency"]
        assert eff["search_codes"] == "run" and eff["search_db"] == 480
        assert eff["encode_latency_p95_ms"] >= eff["encode_latency_ms"] > 0
        assert eff["search_1m_latency_p95_ms"] >= eff["search_1m_latency_ms"] > 0
        assert eff["profile"]["threads"] == 1 and len(eff["profile"]["load_average"]) == 2
        assert "encode_latency_ms" in eff["at_run"]  # the run's own timing is kept
        assert len(r["pr"]["precision"]) == r["bits"] + 1  # pr.npz travels in the record
    page = (board / "synthetic-fg.md").read_text()
    assert "Search ms/query @1M codes" in page and "by `python -m benchmark profile`, all rows in one process" in page
    assert (board / "plots" / "synthetic-fg__frozen_efficientnet_lite0_64px__clean__pr.png").is_file()


def test_names_cannot_shift_cells_or_inject_markup(tmp_path):
    evil = "x|y</td><script>alert(1)</script>"
    records = [fake_record(evil, 12, s, 0.3 + s / 100) for s in (0, 1)]
    records += [fake_record("lsh", 12, s, 0.1) for s in (0, 1)]
    records += [fake_record(evil, 24, 0, 0.0, status="failed")]
    records[-1]["error"] = "RuntimeError: a|b <img src=x>"
    files = exports.build(records)
    page = files["toy.md"].decode()
    text = re.sub(r"`[^`]*`", "", page)  # code spans show HTML literally
    assert "<script>" not in text and "<img" not in text and "</td>" not in text
    assert "--methods 'x\\|y</td><script>alert(1)</script>' --dataset" in page  # literal
    for block in page.split("\n\n"):
        lines = [l for l in block.splitlines() if l.startswith("|")]
        if lines:  # every row of every table has exactly the header's cells
            cells = {len(re.split(r"(?<!\\)\|", l)) for l in lines}
            assert len(cells) == 1, block
    assert escape(evil) in page and "a\\|b &lt;img src=x&gt;" in page
    assert "<script>" not in re.sub(r"`[^`]*`", "", files["README.md"].decode())


def test_file_names_from_names_are_sanitised_and_confined(tmp_path):
    records = [fake_record("dsh", 12, 0, 0.3, dataset="../../escape"),
               fake_record("dsh", 12, 0, 0.3, dataset="..")]
    files = exports.build(records)
    for name in files:
        assert ".." not in name.split("/") and not name.startswith(("/", ".")), name
    out = tmp_path / "out"
    exports.write(files, out)
    assert not (tmp_path / "escape.md").exists() and len(list(out.glob("*.md"))) == 3
    assert safe_name("cub100") == "cub100" and safe_name("a/b") != safe_name("a_b")
    with pytest.raises(Exception, match="outside"):
        confined(out, "../x.md")


def test_runs_that_differ_in_epochs_version_hparams_or_weights_never_share_a_cell():
    records = [fake_record("dsh", 12, s, 0.30 + s / 100) for s in (0, 1)]
    longer = fake_record("dsh", 12, 2, 0.90)
    longer["provenance"]["epochs"], longer["run_id"] = 90, "long"
    tuned = fake_record("dsh", 12, 0, 0.50)
    tuned["spec"]["hparams"], tuned["run_id"] = {"alpha": 0.1}, "tuned"
    weights = fake_record("dsh", 12, 0, 0.40)
    weights["spec"]["backbone_weights"], weights["run_id"] = "abcdef0123456789", "weights"
    newer = fake_record("dsh", 12, 0, 0.60)
    newer["spec"]["version"] = newer["version"] = "0.2.0"
    newer["run_id"] = "newer"
    text = render_table(records + [longer, tuned, weights, newer])
    rows = [l for l in text.splitlines() if l.startswith("| clean | dsh")]
    assert len(rows) == 5, text
    assert "90.00" in next(r for r in rows if "epochs 90" in r)
    both = next(r for r in rows if "epochs 3" in r and "hparams {}" in r and "version 0.1.0" in r
                and "backbone_weights ?" in r)
    assert "30.50 ±" in both  # the two default runs, and only they, share a cell
    assert any("hparams alpha=0.1" in r for r in rows) and any("version 0.2.0" in r for r in rows)


def test_cells_have_t_intervals_bold_best_welch_ties_and_degenerate_marks():
    values = {"a": [0.80, 0.82, 0.81], "b": [0.79, 0.83, 0.80], "c": [0.50, 0.51, 0.52]}
    records = [fake_record(m, 12, s, v) for m, vs in values.items() for s, v in enumerate(vs)]
    for r in records:
        r["metrics"]["map_tie_aware"] = r["metrics"]["map"] - 0.01  # the headline
    broken = [fake_record("d", 12, s, 0.99) for s in range(3)]
    for r in broken:
        r["metrics"]["map_tie_aware"], r["health"] = 0.99, {"degenerate": True, "reasons": ["codes collapsed"]}
    short = fake_record("e", 12, 0, 0.2)
    short["metrics"]["map_tie_aware"] = 0.2
    text = render_table(records + broken + [short])
    row = {l.split("|")[2].strip(): l for l in text.splitlines() if l.startswith("| clean |")}
    a = np.array(values["a"]) - 0.01
    half = stats.t.ppf(0.975, 2) * a.std(ddof=1) / math.sqrt(3)
    assert f"**{100 * a.mean():.2f} ± {100 * half:.2f}**" in row["a"]
    assert stats.ttest_ind(np.array(values["b"]), np.array(values["a"]), equal_var=False).pvalue > 0.05
    assert row["b"].count("≈") == 1 and "≈" not in row["c"] and "**" not in row["c"]
    assert "99.00" in row["d †"] and "†" in row["d †"].split("|")[3] and "**" not in row["d †"]
    assert list(row).index("d †") > list(row).index("c")  # degenerate rows are never ranked first
    assert "20.00 (n=1)" in row["e"]
    page = exports.build(records + broken + [short])["toy.md"].decode()
    assert "| d | 12 | 0 | clean | ok, degenerate | degenerate: codes collapsed |" in page


def test_asymmetric_rows_are_marked_and_explained():
    from benchmark.report.tables import ASYMMETRIC_MARK, render_table
    import copy
    base = {"run_id": "a1", "method": "adsh", "dataset": "toy", "bits": 12, "seed": 0,
            "status": "ok", "distribution": "fghashbench", "version": "0.1.0",
            "spec": {"regime": "frozen", "backbone": "efficientnet_lite0", "input_size": 64,
                     "protocol": {"noise": None, "long_tail": None, "resolution": 1,
                                  "resolution_db": 1, "val_frac": 0}, "hparams": {}},
            "metrics": {"map": 0.5, "map_tie_aware": 0.5}, "efficiency": {},
            "provenance": {"hardware": "cpu", "asymmetric": True}}
    other = copy.deepcopy(base)
    other.update(run_id="b1", method="dsh", provenance={"hardware": "cpu"})
    text = render_table([base, other])
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| clean")}
    assert rows["adsh " + ASYMMETRIC_MARK] and "dsh" in rows
    assert f"{ASYMMETRIC_MARK}: asymmetric" in text
    assert ASYMMETRIC_MARK not in render_table([other])
