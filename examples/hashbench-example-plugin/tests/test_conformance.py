"""The plugin's own test suite: FGHashBench's conformance kit, one test per check."""
from benchmark.conformance import parametrize_with_checks

from hashbench_example.dlbhc import DLBHC


@parametrize_with_checks([DLBHC, "dlbhc"])  # the class, and its installed entry point
def test_conformance(method, check):
    check(method)
