"""The conformance kit (``check-plugin`` and ``parametrize_with_checks``): does a method
honour the contract of :mod:`benchmark.method`? See :mod:`.checks`."""
from .checks import (CHECKS, CheckResult, check_entry_point, check_name, checks_for, methods_of,
                     parametrize_with_checks, run_checks)
from .probe import ConformanceError

__all__ = ["CHECKS", "CheckResult", "ConformanceError", "check_entry_point", "check_name",
           "checks_for", "methods_of", "parametrize_with_checks", "run_checks"]
