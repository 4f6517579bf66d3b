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
needs_cub100 = pytest.mark.skipif(not HAVE_CUB100, reason=f"cub100 not found under {DATA_ROOT}")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One feature cache for the whole test session (hermetic: not the user's cache)."""
    return tmp_path_factory.mktemp("feature-cache")


def run_cli(*args, env=None, cwd=None, timeout=600):
    """Run ``python -m benchmark ARGS`` in a subprocess; return CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "benchmark", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


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
