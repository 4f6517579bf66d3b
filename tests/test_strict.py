"""Harness behaviour that a test must be able to catch when broken: killed runs, the run
id, overwrite modes, plugin names and hooks, the store's schema."""
import json
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from benchmark.eval.metrics import evaluate_codes
from tests.conftest import ROOT, listed_methods, make_plugin_dist, run_cli

TINY = ["--dataset", "synthetic-fg", "--max-classes", "6", "--input-size", "32", "--epochs", "2",
        "--bits", "8", "--no-progress"]

KILLER_PLUGIN = """
import os, signal
import torch
from benchmark.method import HashMethod
from registry import hookimpl

class KilledBetweenEpochs(HashMethod):
    name = "killed-between-epochs"
    train_config = {"epochs": 2, "batch_size": 32, "optimizer": {"type": "SGD", "lr": 0.05}}
    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)
    def on_epoch_start(self, epoch, data):
        if epoch == 1 and os.environ.get("KILL_BETWEEN_EPOCHS"):
            os.kill(os.getpid(), signal.SIGKILL)
    def encode(self, inputs):
        return self.head(inputs["pooled"])
    def loss(self, batch):
        h = torch.tanh(self.encode(batch["inputs"]))
        same = (batch["labels"][:, None] == batch["labels"][None]).float() * 2 - 1
        return {"pairwise": ((h @ h.T) / self.bits - same).pow(2).mean()}

@hookimpl
def register_methods(register):
    register(KilledBetweenEpochs)
"""

# `python -m benchmark` that SIGKILLs itself at KILL_AT = "put:METHOD" (files written, row
# not stored) or "publish:METHOD" (row stored, files not yet in place)
KILLING_CLI = """
import os, signal, sys
import benchmark.run.driver as driver
from benchmark.cli import main
from benchmark.store.sqlite import ResultStore

point, method = os.environ["KILL_AT"].split(":")
stored, original_put, original_publish = [], ResultStore.put, driver.publish

def put(self, record):
    if point == "put" and record["method"] == method:
        os.kill(os.getpid(), signal.SIGKILL)
    original_put(self, record)
    stored.append(record["method"])

def publish(out, run_id):
    if point == "publish" and stored[-1] == method:
        os.kill(os.getpid(), signal.SIGKILL)
    original_publish(out, run_id)

ResultStore.put, driver.publish = put, publish
sys.exit(main(sys.argv[1:]))
"""


def stored_rows(out) -> dict:
    with sqlite3.connect(out / "results.sqlite") as db:
        return {r: (m, s, json.loads(x)) for r, m, s, x in
                db.execute("SELECT run_id, method, status, metrics FROM runs")}


def visible_folders(out) -> set:
    return {p.name for p in (out / "runs").iterdir()} if (out / "runs").is_dir() else set()


def assert_files_match_rows(out, partial_allowed=False):
    """Every run folder has a stored row; every ok row's folder holds the codes it was
    evaluated on (their mAP is the row's)."""
    rows, folders = stored_rows(out), visible_folders(out)
    partial = {f for f in folders if f.endswith(".partial")}
    assert partial_allowed or not partial, partial
    assert folders - partial <= set(rows), folders - partial - set(rows)
    for run_id, (_, status, metrics) in rows.items():
        if status == "ok" and run_id in folders:
            codes = np.load(out / "runs" / run_id / "codes.npz")
            assert (out / "runs" / run_id / "pr.npz").is_file()
            found = evaluate_codes(codes["query_codes"], codes["db_codes"], codes["query_labels"],
                                   codes["db_labels"])["map"]
            assert found == pytest.approx(metrics["map"], abs=1e-12)
    return rows, folders


def test_a_killed_run_leaves_no_files_without_a_row_and_resumes_cleanly(tmp_path, cache_dir):
    site = make_plugin_dist(tmp_path / "site", "killer-plugin", "killer", "killer_plugin",
                            KILLER_PLUGIN)
    (tmp_path / "killing_cli.py").write_text(KILLING_CLI)
    out = tmp_path / "results"
    args = ["run", "--methods", "lsh,itq,killed-between-epochs", *TINY, "--out", out,
            "--cache-dir", cache_dir]
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")

    def run(**extra):
        return subprocess.run([sys.executable, str(tmp_path / "killing_cli.py"), *map(str, args)],
                              cwd=ROOT, env={**env, "KILL_AT": "none:none", **extra},
                              capture_output=True, text=True, timeout=600)

    # 1. killed after itq's codes were written, before its row was stored
    assert run(KILL_AT="put:itq").returncode == -signal.SIGKILL
    rows, folders = assert_files_match_rows(out, partial_allowed=True)
    assert sorted(m for m, _, _ in rows.values()) == ["lsh"] and len(folders) == 2
    # 2. the next run removes itq's partial files, then is killed after storing its row
    second = run(KILL_AT="publish:itq")
    assert second.returncode == -signal.SIGKILL and "removed runs/" in second.stdout
    rows, folders = assert_files_match_rows(out, partial_allowed=True)
    assert sorted(m for m, _, _ in rows.values()) == ["itq", "lsh"] and len(folders) == 2
    # 3. the next run publishes itq's files, then the plugin is killed between its epochs
    assert run(KILL_BETWEEN_EPOCHS="1").returncode == -signal.SIGKILL
    rows, folders = assert_files_match_rows(out)
    assert sorted(m for m, _, _ in rows.values()) == ["itq", "lsh"] and folders == set(rows)
    # 4. a clean resume runs only what is missing; every row has its files
    resumed = run()
    assert resumed.returncode == 0, resumed.stderr
    assert "3 runs in the grid, 2 already recorded, 1 to run" in resumed.stdout
    rows, folders = assert_files_match_rows(out)
    assert folders == set(rows) and all(s == "ok" for _, s, _ in rows.values()) and len(rows) == 3


def test_on_bad_image_is_part_of_the_run_id_only_when_not_the_default(tmp_path):
    from benchmark.data import build_dataset
    from benchmark.grid.request import GridRequest
    from benchmark.grid.runs import expand, resolve_methods, run_id_of
    dataset = build_dataset("synthetic-fg")
    entries = resolve_methods(["lsh"])

    def only(**options):
        (_, spec, run_id), = expand(GridRequest(["lsh"], "synthetic-fg", [8], **options), entries, dataset)
        return spec, run_id

    default, skip = only(), only(on_bad_image="skip")
    assert "on_bad_image" not in default[0]  # the committed records keep their ids
    assert skip[0] == dict(default[0], on_bad_image="skip") and skip[1] != default[1]
    assert run_id_of(default[0]) == default[1] == only(on_bad_image="fail")[1]


def test_overwrite_never_missing_always(tmp_path, cache_dir, capsys):
    from benchmark.cli import main
    out = tmp_path / "results"
    args = ["run", "--methods", "lsh,itq", *TINY, "--out", str(out), "--cache-dir", str(cache_dir)]

    def run(mode):
        assert main([*args, "--overwrite", mode]) == 0
        return capsys.readouterr().out

    assert "0 already recorded, 2 to run" in run("missing")
    first = stored_rows(out)
    itq = next(r for r, (m, _, _) in first.items() if m == "itq")
    with sqlite3.connect(out / "results.sqlite") as db:  # as if itq had failed
        db.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", (itq,))
    assert "2 already recorded, 0 to run" in run("never")  # never: not even a failed run
    assert stored_rows(out)[itq][1] == "failed"
    assert "1 already recorded, 1 to run" in run("missing")  # missing: the failed one only
    assert stored_rows(out)[itq][1] == "ok"
    (out / "runs" / itq / "stale.txt").write_text("from the run before")
    assert "0 already recorded, 2 to run" in run("always")
    rows, folders = assert_files_match_rows(out)
    assert folders == set(rows) == set(first) and not (out / "runs" / itq / "stale.txt").exists()
    assert {r: m["map"] for r, (_, _, m) in rows.items()} == {r: m["map"] for r, (_, _, m) in first.items()}


PLUGIN_TEMPLATE = """
import torch
from benchmark.method import HashMethod
from registry import hookimpl

class Mine(HashMethod):
    name = {name!r}
    trainable = False
    def fit(self, inputs, labels):
        pass
    def encode(self, inputs):
        return inputs["pooled"][:, :self.bits]

@hookimpl
def register_methods(register):
    {body}
"""


def write_plugins(site, plugins: dict) -> dict:
    """``{entry-point name: (method name, hook body)}`` -> PYTHONPATH env."""
    for entry, (name, body) in plugins.items():
        make_plugin_dist(site, f"{entry}-dist", entry, f"{entry}_mod",
                         PLUGIN_TEMPLATE.format(name=name, body=body))
    return {"PYTHONPATH": str(site)}


def test_plugin_name_clashes_and_bad_hooks_fail_only_the_newcomer(tmp_path, cache_dir):
    env = write_plugins(tmp_path / "site", {
        "aaa": ("lsh", "register(Mine)"),              # takes a built-in name
        "dupa": ("dup", "register(Mine)"),             # first of two with one name
        "dupb": ("dup", "register(Mine)"),
        "raiser": ("raiser", "raise RuntimeError('hook broke')"),
        "notamethod": ("x", "register(type('Named', (torch.nn.Module,), {'name': 'named'}))"),
        "notaclass": ("y", "register('lsh')"),
    })
    listing = run_cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    failed = {l.split()[2]: l for l in lines if l.startswith("failed plugin ")}
    assert set(failed) == {"aaa", "dupb", "raiser", "notamethod", "notaclass"}, lines
    assert "'lsh' already provided by plugin 'classic'" in failed["aaa"]
    assert "'dup' already provided by plugin 'dupa'" in failed["dupb"]
    assert "RuntimeError: hook broke" in failed["raiser"]
    assert "not a HashMethod subclass" in failed["notamethod"]
    assert "method name 'None'" in failed["notaclass"]  # a string has no `name`
    methods = listed_methods(listing.stdout)
    assert not {"named", "x", "y"} & set(methods)
    for name in ("lsh", "itq"):
        assert methods[name][3].startswith("fghashbench"), lines
    assert methods["dup"][3].startswith("dupa-dist"), lines
    out = tmp_path / "results"
    ran = run_cli("run", "--methods", "lsh,itq,dup", *TINY, "--out", out, "--cache-dir", cache_dir, env=env)
    assert ran.returncode == 0, ran.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        assert sorted(db.execute("SELECT method, distribution, status FROM runs")) == [
            ("dup", "dupa-dist", "ok"), ("itq", "fghashbench", "ok"), ("lsh", "fghashbench", "ok")]


def test_a_store_with_another_schema_version_is_a_one_line_error(tmp_path):
    from benchmark.cli import main
    from benchmark.errors import BenchmarkError
    from benchmark.store.sqlite import SCHEMA_VERSION, ResultStore
    path = tmp_path / "results" / "results.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(BenchmarkError, match=f"schema {SCHEMA_VERSION + 1}, this version reads {SCHEMA_VERSION}"):
        ResultStore(path)
    result = run_cli("run", "--methods", "lsh", *TINY, "--out", path.parent)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "schema" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert main(["leaderboard", "--results", str(path.parent), "--out", str(tmp_path / "b")]) == 2
