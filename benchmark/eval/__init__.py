"""Measuring a run: the Hamming ranking and its metrics, re-ID metrics, faiss search,
profiling (params, MACs, latency) and the ``perf`` benchmarks."""
