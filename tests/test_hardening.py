"""Bad input refused up front (one line, exit 2, nothing written), a data root created by
``data download``, a corrupt store named, the store closed on any exception, and several
processes sharing one results folder (each run executed once)."""
import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import time

import pytest

from benchmark.cli import main
from benchmark.grid.request import GridRequest
from benchmark.run import driver
from benchmark.store.claims import start_time
from benchmark.store.sqlite import ResultStore
from tests.conftest import ROOT, make_plugin_dist, run_cli

TINY = ["--dataset", "synthetic-fg", "--input-size", "64", "--epochs", "2", "--no-progress"]


def cli(capsys, *args) -> str:
    """``python -m benchmark ARGS`` in this process; asserts exit status 2, returns stderr."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        status = exc.code
    assert status == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--bits", "100000"], "error: bits must be at most 1024, got 100000"),
    (["--bits", "12,,24"], "error: argument --bits: empty item in '12,,24'"),
    (["--seeds", "0,"], "error: argument --seeds: empty item in '0,'"),
    (["--seeds", "-1"], "error: seeds must be integers in 0..4294967295, got [-1]"),
    (["--long-tail", "exp:nan"], "error: --long-tail: nan is not a finite number"),
    (["--long-tail", "exp:inf"], "error: --long-tail: inf is not a finite number"),
    (["--resolution", "inf"], "error: --resolution: inf is not a finite number"),
    (["--noise", "symmetric:0.2,,0.4"], "error: --noise 'symmetric:0.2,,0.4': an empty item"),
    (["--backbone", "nope"], "error: unknown backbone 'nope'; known: efficientnet_lite0"),
    (["--regime", "sideways"], "error: unknown regime 'sideways'"),
    (["--dataset", "nope"], "error: unknown dataset 'nope'; known: aircraft"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    stderr = cli(capsys, "run", "--methods", "lsh", *TINY, "--out", out, *args)
    assert stderr.startswith(message), stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()  # no store, no features, no runs


def test_download_creates_a_missing_data_root(tmp_path):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        info = tarfile.TarInfo("food-101/meta/classes.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"apple\n"))
    archive = tmp_path / "food-101.tar.gz"
    archive.write_bytes(payload.getvalue())
    root = tmp_path / "new" / "data"
    result = run_cli("data", "download", "food101", "--data-root", root, "--url",
                     archive.as_uri(), "--sha256", hashlib.sha256(payload.getvalue()).hexdigest())
    assert result.returncode == 0, result.stderr
    assert (root / "food-101" / "meta" / "classes.txt").read_text() == "apple\n"


def test_a_corrupt_store_is_named_in_one_line(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    store.write_bytes(b"not a database, just bytes " * 200)
    for args in (["run", "--methods", "lsh", *TINY, "--out", tmp_path],
                 ["leaderboard", "--results", tmp_path, "--out", tmp_path / "boards"]):
        assert cli(capsys, *args).strip() == (f"error: {store}: not a readable result store "
                                              f"(sqlite3: file is not a database)")


def test_the_store_is_closed_and_the_claim_dropped_on_any_exception(tmp_path, monkeypatch, cache_dir):
    closed = []

    class Tracked(ResultStore):
        def close(self):
            closed.append(self.path)
            super().close()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "ResultStore", Tracked)
    monkeypatch.setattr(driver, "execute", interrupted)
    request = GridRequest(methods=["lsh"], dataset="synthetic-fg", input_size=64, bits=[8],
                          out=tmp_path, progress=False, cache_dir=cache_dir)
    with pytest.raises(KeyboardInterrupt):
        driver.run_grid(request, log=lambda *a: None)
    assert closed == [tmp_path / "results.sqlite"]
    with sqlite3.connect(closed[0]) as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


# -- one results folder, several processes -----------------------------------------------------

def _insert_claim(store, run_id, pid, started):
    with store.transaction() as db:
        db.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, NULL)",
                   (run_id, store.me.host, pid, started, time.time()))


def test_a_live_process_claim_is_respected_and_a_dead_one_expires(tmp_path):
    everything = lambda status: True  # noqa: E731
    live = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        with ResultStore(tmp_path / "results.sqlite") as store:
            _insert_claim(store, "a" * 16, gone.pid, "1")
            _insert_claim(store, "b" * 16, live.pid, start_time(live.pid))
            _insert_claim(store, "c" * 16, live.pid, "1")  # the pid, but another process start
            assert store.others_running() == ["b" * 16]
            assert store.claim("a" * 16, everything, since=time.time()) is None
            assert store.claim("b" * 16, everything, since=time.time()) == \
                f"being run by process {live.pid} on {store.me.host}"
            assert store.claim("c" * 16, everything, since=time.time()) is None
            live.kill()
            live.wait()
            assert store.claim("b" * 16, everything, since=time.time()) is None
            assert store.others_running() == []
    finally:
        live.kill()


GATED = """
import os, time
from pathlib import Path
import torch
from benchmark.method import HashMethod
from registry import hookimpl

class Gated(HashMethod):
    '''Closed-form; fit marks who runs it, then waits for the gate file.'''
    name = "gated"
    trainable = False
    supervised = False
    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.register_buffer("w", torch.randn(input_shapes["pooled"][0], bits))
    def fit(self, inputs, labels):
        marks = Path(os.environ["MARKS"])
        (marks / f"{self.bits}-{os.getpid()}").touch()
        deadline = time.time() + 120
        while not Path(os.environ["GATE"]).exists() and time.time() < deadline:
            time.sleep(0.05)
    def encode(self, inputs):
        return inputs["pooled"] @ self.w

@hookimpl
def benchmark_methods():
    return [Gated]
"""


def _wait_for(condition, seconds=180):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_two_processes_on_one_folder_run_each_run_once(tmp_path, cache_dir):
    site = make_plugin_dist(tmp_path / "site", "gated-plugin", "gated", "gated_plugin", GATED)
    marks, gate, out = tmp_path / "marks", tmp_path / "gate", tmp_path / "out"
    marks.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), MARKS=str(marks), GATE=str(gate),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "benchmark", "run", "--methods", "gated", *TINY,
               "--bits", "8,16,24,32", "--out", str(out), "--cache-dir", str(cache_dir)]
    start = lambda: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,  # noqa: E731
                                     stderr=subprocess.PIPE, text=True)
    first = start()
    try:
        _wait_for(lambda: len(list(marks.iterdir())) == 1)  # the first holds a run, gated
        second = start()
        _wait_for(lambda: len(list(marks.iterdir())) == 2)  # the second took another one
        gate.touch()
        outputs = [p.communicate(timeout=300) for p in (first, second)]
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0 and second.returncode == 0, outputs
    done = sorted(m.name.split("-") for m in marks.iterdir())
    assert sorted(int(bits) for bits, _ in done) == [8, 16, 24, 32]  # each run executed once
    assert {pid for _, pid in done} == {str(first.pid), str(second.pid)}  # the work was split
    assert "skipped, being run by process" in outputs[1][0]
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*), SUM(status = 'ok') FROM runs").fetchone() == (4, 4)
