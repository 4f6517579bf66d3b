"""The README's "Add a method" section documents every hook and matches the example."""
import inspect
import re
import tomllib

from registry import ENTRY_POINT_GROUP, hookspecs
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def section(title_start: str) -> str:
    match = re.search(rf"^## {re.escape(title_start)}.*?(?=^## )", README, re.M | re.S)
    assert match, f"README has no section starting '## {title_start}'"
    return match.group(0)


def hookspec_names() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    names = []
    for obj in vars(hookspecs).values():
        members = vars(obj).values() if inspect.isclass(obj) else [obj]
        names += [f.__name__ for f in members if callable(f) and hasattr(f, marker)]
    return sorted(names)


def test_every_hookspec_is_documented_in_add_a_method():
    names = hookspec_names()
    assert "benchmark_methods" in names
    hooks_table = section("Add a method").split("### Hooks", 1)[1]
    undocumented = [n for n in names if not re.search(rf"^\| `{n}\(", hooks_table, re.M)]
    assert not undocumented, f"hookspecs missing from README's hook table: {undocumented}"


def test_add_a_method_matches_the_example_package():
    text = section("Add a method")
    example = tomllib.loads((ROOT / "examples/hashbench-example-plugin/pyproject.toml").read_text())
    assert ENTRY_POINT_GROUP in example["project"]["entry-points"]
    assert f'[project.entry-points."{ENTRY_POINT_GROUP}"]' in text
    for command in ("pip install --no-deps --no-build-isolation", "python -m benchmark list",
                    "python -m benchmark check-plugin", "parametrize_with_checks",
                    "python -m benchmark run", "python -m benchmark leaderboard",
                    "BENCHMARK_PLUGINS", "BENCHMARK_DISABLE_PLUGINS"):
        assert command in README, command
