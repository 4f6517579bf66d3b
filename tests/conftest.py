import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "datasets"
DATA_ROOT = Path(os.environ.get("BENCHMARK_DATA_ROOT") or SHARED_DATA)
HAVE_CUB100 = (DATA_ROOT / "cub100" / "images.txt").is_file()
#: under CI (``CI=true``, as .ci/run sets) real-image tests never skip silently
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def needs_cub100(test):
    """Mark a real-image test (``cub100`` marker, counted in the summary): it runs when cub100
    is under the data root, is skipped when it is not, and fails under CI when the data
    root exists but holds no readable cub100 (a broken data set-up, not a reason to skip)."""
    test = pytest.mark.cub100(test)
    if HAVE_CUB100 or not (IN_CI and DATA_ROOT.is_dir()):
        return pytest.mark.skipif(not HAVE_CUB100, reason=f"cub100 not found under {DATA_ROOT}")(test)

    @functools.wraps(test)
    def broken_setup(*args, **kwargs):
        pytest.fail(f"CI: the data root {DATA_ROOT} exists but has no cub100/images.txt; "
                    f"real-image tests must run")
    return broken_setup


def pytest_configure(config):
    config.addinivalue_line("markers", "cub100: needs the cub100 images (real-image test)")


def pytest_terminal_summary(terminalreporter):
    """One line: how many real-image (cub100) tests ran, passed, failed and were skipped."""
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        reports = terminalreporter.stats.get(outcome, [])
        counts[outcome] = sum(1 for r in reports if getattr(r, "when", "call") in ("call", "setup")
                              and "cub100" in getattr(r, "keywords", {}))
    ran = counts["passed"] + counts["failed"]
    terminalreporter.write_line(f"cub100 tests: {ran} ran ({counts['passed']} passed, "
                                f"{counts['failed']} failed), {counts['skipped']} skipped, "
                                f"{counts['error']} errors; data root {DATA_ROOT}")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One feature cache for the whole test session (hermetic: not the user's cache)."""
    return tmp_path_factory.mktemp("feature-cache")


def run_cli(*args, env=None, cwd=None, timeout=600):
    """Run ``python -m benchmark ARGS`` in a subprocess; return CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "benchmark", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """A printed markdown table whose first column is ``method``, as {method: its cells}."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ")]
    return {row[0]: row for row in rows if row[0] != "method"}


def listed_methods(stdout: str) -> dict[str, list[str]]:
    """``list``'s method table as {name: [name, supervised, inputs, provided by]}."""
    return table_rows(stdout)


def make_plugin_dist(site: Path, dist: str, entry_name: str, module: str, source: str,
                     version: str = "1.0") -> Path:
    """Write an installed-looking distribution (module + dist-info with an entry point) into
    ``site``; put ``site`` on PYTHONPATH to make it discoverable."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[benchmark.methods]\n{entry_name} = {module}\n")
    return site
