"""leaderboards/: records export, deterministic plots, paper rows, index, --check."""
import json
import random
import sqlite3  # noqa: F401  (the store is SQLite; records are written through ResultStore)

import pytest

from benchmark.report import files as exports, papers
from benchmark.store import records as records_io
from benchmark.store.sqlite import ResultStore
from tests.conftest import ROOT, run_cli

LEADERBOARDS = ROOT / "leaderboards"


def fake_record(method, bits, seed, map_value, dataset="toy", noise=None, status="ok"):
    protocol = {"noise": noise, "long_tail": None, "resolution": 1, "resolution_db": 1,
                "val_frac": 0}
    spec = {"method": method, "dataset": dataset, "regime": "frozen",
            "backbone": "efficientnet_lite0", "input_size": 64, "bits": bits, "seed": seed,
            "epochs": None, "data": "0123456789abcdef", "protocol": protocol, "hparams": {},
            "distribution": "fghashbench", "version": "0.1.0", "plugin": method}
    return {"run_id": f"{method}-{bits}-{seed}-{noise}", "method": method, "dataset": dataset,
            "regime": "frozen", "backbone": "efficientnet_lite0", "bits": bits, "seed": seed,
            "status": status, "error": None if status == "ok" else "RuntimeError: boom",
            "distribution": "fghashbench", "version": "0.1.0", "wall_time": random.random(),
            "spec": spec, "protocol": dict(protocol, materialised={"hash": "ab"}),
            "metrics": {"map": map_value, "p@10": map_value / 3},
            "efficiency": {"params": 3_400_000, "macs": 400_000_000},
            "provenance": {"hardware": "Toy CPU x2", "epochs": 0 if method == "lsh" else 3,
                           "versions": {"torch": "2.13.0"}, "loss_history": [1 / 3, 0.25]}}


def test_timing_footnote_states_the_load_while_timing_when_recorded():
    from benchmark.report.tables import render_table
    records = [fake_record("dsh", 12, s, 0.3) for s in (0, 1)]
    assert "load average" not in render_table(records)  # older records: nothing claimed
    for record, load in zip(records, (0.8, 6.25)):
        record["provenance"]["load_average"] = load
    assert ("measured on Toy CPU x2 at the end of each run, in that run's process (1-minute load "
            "average 0.8 to 6.2)") in render_table(records)


def grid(noise=None):
    """Two methods x bits 12/24 x seeds 0/1 (+ one failed run, exported to failures.jsonl)."""
    rng = random.Random(0)
    records = [fake_record(m, b, s, base + b / 400 + rng.random() / 100, noise=noise)
               for m, base in (("lsh", 0.05), ("dsh", 0.2)) for b in (12, 24) for s in (0, 1)]
    return records + [fake_record("dsh", 32, 0, 0.0, noise=noise, status="failed")]


def test_records_export_is_sorted_rounded_stable_and_round_trips():
    records = grid()
    text = records_io.dumps_records(list(reversed(records)))
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 8 and [r["run_id"] for r in lines] == sorted(r["run_id"] for r in lines)
    assert all("wall_time" not in r and r["status"] == "ok" for r in lines)
    assert lines[0]["provenance"]["loss_history"] == [0.333333, 0.25]
    assert all(len(repr(r["metrics"]["map"]).lstrip("0.")) <= 6 for r in lines)
    # the same records with different wall times give the same bytes; a round trip is a no-op
    assert records_io.dumps_records(grid()) == text
    assert records_io.dumps_records(records_io.loads_records(text)) == text


def test_build_is_deterministic_and_check_catches_every_kind_of_drift(tmp_path):
    records = grid() + grid(noise="symmetric:0.2")
    files = exports.build(records)
    assert files == exports.build(list(reversed(records)))
    plots = sorted(name for name in files if name.startswith("plots/"))
    assert plots == ["plots/toy__frozen_efficientnet_lite0_64px__clean.png",
                     "plots/toy__frozen_efficientnet_lite0_64px__clean__efficiency.png",
                     "plots/toy__frozen_efficientnet_lite0_64px__noise=symmetric_0.2.png"]
    assert all(files[p].startswith(b"\x89PNG") and b"matplotlib" not in files[p] for p in plots)
    exports.write(files, tmp_path)
    assert exports.stale(files, tmp_path) == []
    (tmp_path / plots[0]).write_bytes(files[plots[0]][:-1] + b"\x00")
    (tmp_path / "plots" / "old.png").write_bytes(b"")
    (tmp_path / "toy.md").write_text((tmp_path / "toy.md").read_text() + " ")
    # a page of a dataset no longer in the records is stale too; hand-written notes are not
    (tmp_path / "gone.md").write_text("# Leaderboard: gone\n\n| clean | dsh | 1.0 |\n")
    (tmp_path / "NOTES.md").write_text("# Notes\n\nprose\n")
    assert sorted(exports.stale(files, tmp_path)) == sorted([plots[0], "toy.md", "plots/old.png",
                                                             "gone.md"])
    exports.write(files, tmp_path)  # rewriting repairs everything and removes what is gone
    assert exports.stale(files, tmp_path) == [] and not (tmp_path / "plots" / "old.png").exists()
    assert not (tmp_path / "gone.md").exists() and (tmp_path / "NOTES.md").is_file()


def test_cli_store_and_records_give_identical_bytes_across_processes(tmp_path):
    results = tmp_path / "results"
    with ResultStore(results / "results.sqlite") as store:
        for record in grid():
            store.put(record)
    from_store = tmp_path / "from-store"
    made = run_cli("leaderboard", "--results", results, "--out", from_store)
    assert made.returncode == 0, made.stderr
    from_records = tmp_path / "from-records"
    again = run_cli("leaderboard", "--records", from_store / "records.jsonl", "--out", from_records)
    assert again.returncode == 0, again.stderr
    names = sorted(p.relative_to(from_store) for p in from_store.rglob("*") if p.is_file())
    assert [str(n) for n in names] == ["README.md", "failures.jsonl",
                                       "plots/toy__frozen_efficientnet_lite0_64px__clean.png",
                                       "plots/toy__frozen_efficientnet_lite0_64px__clean__efficiency.png",
                                       "records.jsonl", "toy.md"]
    for name in names:  # PNG bytes included: another process, the same bytes
        assert (from_store / name).read_bytes() == (from_records / name).read_bytes(), name
    check = run_cli("leaderboard", "--records", from_store / "records.jsonl", "--out",
                    from_records, "--check")
    assert check.returncode == 0 and "up to date" in check.stdout
    png = from_records / names[2]
    png.write_bytes(png.read_bytes() + b"\x00")
    stale = run_cli("leaderboard", "--records", from_store / "records.jsonl", "--out",
                    from_records, "--check")
    assert stale.returncode == 1 and f"stale: {png}" in stale.stdout


def test_index_states_the_protocol_of_each_table():
    index = exports.build(grid())["README.md"].decode()
    for row in ("| dataset | toy (data fingerprint 0123456789abcdef) |", "| regime | frozen |",
                "| backbone | efficientnet_lite0 at 64 px |", "| protocol | clean |",
                "| seeds | 0, 1 |", "| bits | 12, 24 |", "| epochs | dsh 3, lsh fit |",
                "| degenerate runs | 0 |",
                "| hardware (latency columns) | Toy CPU x2 |"):
        assert row in index, row
    from benchmark.grid.defaults import DEFAULT_GRID
    wanted = 2 * len(DEFAULT_GRID["bits"]) * len(DEFAULT_GRID["seeds"])
    assert f"**PARTIAL**, 8 of the {wanted} runs" in index
    assert "| failed runs | 1; dsh 32b seed 0: RuntimeError: boom |" in index


def test_paper_rows_are_separate_and_cited():
    rows = papers.read_papers(LEADERBOARDS / papers.PAPERS_FILE)
    assert rows and all(row["citation"] and row["table"] for row in rows)
    cmbh_cub = [r for r in rows if r["method"] == "CMBH" and r["table"] == "Table 2"
                and r["dataset"] == "CUB-200-2011"]
    assert cmbh_cub[0]["map"] == {"12": 84.07, "24": 85.79, "32": 86.21, "48": 86.47}
    files = exports.build(grid(), rows)
    quoted = files["papers.md"].decode()
    assert quoted.startswith("# Quoted from papers (not reproduced here)")
    assert "| CMBH | 84.07 | 85.79 | 86.21 | 86.47 | `cmbh` |" in quoted
    page = files["toy.md"].decode()
    assert "84.07" not in page and "papers.md" in page and "reproduced here" in page


def test_committed_leaderboards_regenerate_byte_for_byte():
    """What CI checks (``make leaderboard-check``)."""
    check = run_cli("leaderboard", "--records", LEADERBOARDS / "records.jsonl", "--out",
                    LEADERBOARDS, "--check")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("content, message", [
    ("{not json}\n", "line 1: not JSON"),
    ('{"run_id": "x"}\n', "line 1: missing method, dataset, bits, seed, spec, metrics"),
])
def test_bad_records_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "records.jsonl"
    path.write_text(content)
    result = run_cli("leaderboard", "--records", path, "--out", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
