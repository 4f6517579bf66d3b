"""FGHashBench harness: data, protocols, features, training, evaluation, store, leaderboards."""
from .errors import BenchmarkError
from .method import HashMethod

__all__ = ["BenchmarkError", "HashMethod"]
