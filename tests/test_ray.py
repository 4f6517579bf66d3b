"""``run --executor ray``: the same records and codes as ``local``; a killed worker is
retried once, a plugin's exception is not; a killed driver leaves no partial row and the
next run resumes. One local Ray (2 CPUs, no dashboard) serves the whole module."""
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import ray
import torch

from benchmark.grid.request import GridRequest
from benchmark.run.driver import run_grid
from registry import load_plugins
from tests.conftest import ROOT, make_plugin_dist

PLUGIN = """
import os, time
from pathlib import Path
from plugins.dsh import DSH
from registry import hookimpl

FLAGS = Path(os.environ["FGHB_RAY_TEST_FLAGS"])


class Killable(DSH):
    name = "ray-killable"
    def loss(self, batch):
        pid = FLAGS / "worker.pid"
        if not pid.exists():  # the first attempt waits here to be killed
            (FLAGS / "worker.tmp").write_text(str(os.getpid()))
            os.replace(FLAGS / "worker.tmp", pid)
            time.sleep(300)
        return super().loss(batch)


class Exploding(DSH):
    name = "ray-exploding"
    def loss(self, batch):
        raise RuntimeError("boom in a plugin")


class Blocking(DSH):
    name = "ray-blocking"
    def loss(self, batch):
        while self.bits != 8 and not (FLAGS / "release").exists():
            time.sleep(0.05)
        return super().loss(batch)


@hookimpl
def benchmark_methods():
    return [Killable, Exploding, Blocking]
"""
TINY = dict(dataset="synthetic-fg", input_size=64, epochs=2, progress=False)


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray whose workers import the test plugin; (flags folder, env for drivers)."""
    site = tmp_path_factory.mktemp("ray-site")
    make_plugin_dist(site, "ray-test-plugin", "raytest", "ray_test_plugin", PLUGIN)
    flags = tmp_path_factory.mktemp("ray-flags")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "FGHB_RAY_TEST_FLAGS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(ROOT), saved["PYTHONPATH"]]))
    os.environ["FGHB_RAY_TEST_FLAGS"] = str(flags)
    sys.path.insert(0, str(site))
    load_plugins(reload=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield flags, dict(os.environ)
    finally:
        ray.shutdown()
        sys.path.remove(str(site))
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        load_plugins(reload=True)


def rows(out):
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute("SELECT method, bits, status FROM runs ORDER BY method, bits").fetchall()


def test_local_and_ray_give_identical_metrics_and_byte_identical_codes(ray_session, tmp_path, cache_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task runs
    try:
        grids = {executor: run_grid(GridRequest(methods=["lsh", "dsh"], bits=[8, 16], **TINY,
                                                cache_dir=cache_dir, out=tmp_path / executor,
                                                executor=executor), log=lambda _: None)
                 for executor in ("local", "ray")}
    finally:
        torch.set_num_threads(threads)
    local = {r["run_id"]: r for r in grids["local"]}
    remote = {r["run_id"]: r for r in grids["ray"]}
    assert len(local) == 4 and set(local) == set(remote)
    for run_id, record in local.items():
        assert record["status"] == remote[run_id]["status"] == "ok"
        assert record["metrics"] == remote[run_id]["metrics"]
        assert remote[run_id]["provenance"]["attempts"] == 1
        for name in ("codes.npz", "pr.npz"):
            assert (tmp_path / "local" / "runs" / run_id / name).read_bytes() == \
                (tmp_path / "ray" / "runs" / run_id / name).read_bytes()


def test_killed_worker_is_retried_once_and_a_plugin_error_is_not(ray_session, tmp_path, cache_dir):
    flags, _ = ray_session
    killed = []

    def kill_the_worker():
        pid_file = flags / "worker.pid"
        deadline = time.time() + 120
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        if pid_file.exists():
            killed.append(int(pid_file.read_text()))
            os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    records = run_grid(GridRequest(methods=["ray-killable", "ray-exploding"], bits=[8], **TINY,
                                   cache_dir=cache_dir, out=tmp_path / "out", executor="ray"),
                       log=lambda _: None)
    killer.join(timeout=5)
    assert killed and killed[0] != os.getpid()
    by_method = {r["method"]: r for r in records}
    assert by_method["ray-killable"]["status"] == "ok"
    assert by_method["ray-killable"]["provenance"]["attempts"] == 2
    assert by_method["ray-exploding"]["status"] == "failed"
    assert by_method["ray-exploding"]["error"] == "RuntimeError: boom in a plugin"
    assert by_method["ray-exploding"]["provenance"]["attempts"] == 1
    assert rows(tmp_path / "out") == [("ray-exploding", 8, "failed"), ("ray-killable", 8, "ok")]


def test_killed_driver_leaves_no_partial_row_and_the_next_run_resumes(ray_session, tmp_path, cache_dir):
    flags, env = ray_session
    out = tmp_path / "grid"
    args = ["--methods", "ray-blocking", "--bits", "8,12", "--dataset", "synthetic-fg",
            "--input-size", "64", "--epochs", "2", "--no-progress", "--cache-dir", str(cache_dir),
            "--out", str(out), "--executor", "ray"]
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "benchmark", "run", *args, "--ray-address", address],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        if (out / "results.sqlite").exists() and rows(out):
            break
        time.sleep(0.1)
    driver.kill()  # SIGKILL while the 12-bit run is in flight
    driver.wait()
    assert rows(out) == [("ray-blocking", 8, "ok")]
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (flags / "release").touch()
    logged = []
    records = run_grid(GridRequest(methods=["ray-blocking"], bits=[8, 12], **TINY,
                                   cache_dir=cache_dir, out=out, executor="ray"), log=logged.append)
    assert "2 runs in the grid, 1 already recorded, 1 to run" in logged[0]
    assert [(r["bits"], r["status"]) for r in records] == [(12, "ok")]
    assert rows(out) == [("ray-blocking", 8, "ok"), ("ray-blocking", 12, "ok")]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        r[0] for r in sqlite3.connect(out / "results.sqlite").execute("SELECT run_id FROM runs"))
