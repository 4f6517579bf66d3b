"""A third-party plugin package, installed with pip into a temporary site dir, just works;
``BENCHMARK_PLUGINS`` / ``BENCHMARK_DISABLE_PLUGINS`` select plugins; every result record
names the distribution and version that provided its method."""
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from registry import load_plugins
from tests.conftest import ROOT, listed_methods, make_plugin_dist, run_cli

EXAMPLE = ROOT / "examples" / "hashbench-example-plugin"
TINY = ["--dataset", "synthetic-fg", "--input-size", "64", "--epochs", "2", "--no-progress"]
OTHER_PLUGIN = """
import torch
from benchmark.method import HashMethod
from registry import hookimpl

class Other(HashMethod):
    name = "other"
    supervised = False
    trainable = False
    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.register_buffer("projection", torch.randn(input_shapes["pooled"][0], bits))
    def fit(self, inputs, labels=None):
        pass
    def encode(self, inputs):
        return inputs["pooled"] @ self.projection

@hookimpl
def benchmark_methods():
    return [Other]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``pip install`` the example (a copy, so no build files land in the repo) offline."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = shutil.copytree(EXAMPLE, work / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    make_plugin_dist(target, "other-plugin", "other", "other_plugin", OTHER_PLUGIN, "3.4")
    return target


def listed(env) -> dict[str, list[str]]:
    result = run_cli("list", env=env)
    assert result.returncode == 0, result.stderr
    return listed_methods(result.stdout)


def test_installed_example_is_listed(site):
    methods = listed({"PYTHONPATH": str(site)})
    assert methods["dlbhc"] == ["dlbhc", "yes", "pooled", "hashbench-example-plugin 0.1.0 (plugin dlbhc)"]
    assert methods["other"][3].startswith("other-plugin 3.4")


def test_example_runs_and_records_its_distribution(site, tmp_path, cache_dir):
    out = tmp_path / "results"
    env = {"PYTHONPATH": str(site)}
    result = run_cli("run", "--methods", "dlbhc,lsh", *TINY, "--bits", "8,16", "--out", out,
                     "--cache-dir", cache_dir, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        records = db.execute("SELECT method, status, distribution, version, "
                             "json_extract(spec, '$.distribution'), json_extract(spec, '$.version') "
                             "FROM runs ORDER BY method, bits").fetchall()
    assert records == [("dlbhc", "ok", "hashbench-example-plugin", "0.1.0",
                        "hashbench-example-plugin", "0.1.0")] * 2 + \
                      [("lsh", "ok", "fghashbench", "0.1.0", "fghashbench", "0.1.0")] * 2
    board = run_cli("leaderboard", "--results", out, "--out", tmp_path / "boards", env=env)
    assert board.returncode == 0, board.stderr
    rows = [line for line in (tmp_path / "boards" / "synthetic-fg.md").read_text().splitlines()
            if line.startswith("| clean | dlbhc")]  # the results table (not setup/failure lists)
    assert len(rows) == 1 and "hashbench-example-plugin 0.1.0" in rows[0]


def test_example_passes_the_conformance_kit(site):
    env = {"PYTHONPATH": str(site)}
    kit = run_cli("check-plugin", "dlbhc", env=env)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    from benchmark.conformance import CHECKS
    assert kit.stdout.count("  PASS ") == len(CHECKS) + 1  # and the entry-point check
    # the plugin's own pytest suite uses the same checks through parametrize_with_checks
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(EXAMPLE / "tests")], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"},
                           timeout=300)
    # every check on the class, and every check plus the entry-point check on the name
    expected = f"{2 * len(CHECKS) + 1} passed"
    assert suite.returncode == 0 and expected in suite.stdout, suite.stdout[-2000:]


@pytest.fixture
def plugins_with(site, monkeypatch):
    """Load plugins in this process with ``site`` importable and the given environment;
    the default plugin set is restored afterwards."""
    monkeypatch.syspath_prepend(str(site))

    def load(**env):
        for name in ("BENCHMARK_PLUGINS", "BENCHMARK_DISABLE_PLUGINS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return load_plugins(reload=True).methods

    yield load
    monkeypatch.undo()
    load_plugins(reload=True)


def test_benchmark_plugins_loads_exactly_the_named_external_plugins(plugins_with):
    assert {"dlbhc", "other", "lsh", "itq", "dsh"} <= set(plugins_with())
    only_example = plugins_with(BENCHMARK_PLUGINS="dlbhc")
    assert "dlbhc" in only_example and "other" not in only_example
    assert {"lsh", "itq", "dsh"} <= set(only_example)  # built-ins always load
    assert {"dlbhc", "other"} <= set(plugins_with(BENCHMARK_PLUGINS="dlbhc, other"))
    unknown = plugins_with(BENCHMARK_PLUGINS="nothing-by-this-name")
    assert "dlbhc" not in unknown and "other" not in unknown


def test_disable_plugins_blocks_external_and_builtin_entry_points(plugins_with):
    methods = plugins_with(BENCHMARK_DISABLE_PLUGINS="dlbhc,dsh")
    assert "dlbhc" not in methods and "dsh" not in methods
    assert {"other", "lsh", "itq"} <= set(methods)
    # both together: the block wins over the selection
    both = plugins_with(BENCHMARK_PLUGINS="dlbhc,other", BENCHMARK_DISABLE_PLUGINS="other")
    assert "dlbhc" in both and "other" not in both


def test_disabled_method_is_a_one_line_error(site, tmp_path):
    env = {"PYTHONPATH": str(site), "BENCHMARK_DISABLE_PLUGINS": "dlbhc"}
    blocked = run_cli("run", "--methods", "dlbhc", *TINY, "--out", tmp_path, env=env)
    assert blocked.returncode == 2 and "unknown method 'dlbhc'" in blocked.stderr
    assert len(blocked.stderr.strip().splitlines()) == 1
