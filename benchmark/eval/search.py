"""Exact top-k search with faiss: Hamming search on binary codes, inner product on floats.

Binary codes are packed 8 bits to a byte, first bit in the most significant position, and
zero-padded to a multiple of 64 bits by default: padding adds the same zero bits to every
code, so distances are unchanged, and faiss then compares whole 64-bit words (a 48-bit
code is 6 bytes, which takes faiss's slower generic path). Ties in the returned top-k
follow faiss's order, so this module serves latency measurements, not metrics (those are
exact in :mod:`benchmark.evaluation`).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

WORD_BITS = 64


def pack_codes(codes: np.ndarray, pad_to: int | None = WORD_BITS) -> np.ndarray:
    """(N, bits) 0/1 codes -> (N, bytes) uint8, zero-padded to a multiple of ``pad_to`` bits
    (``None``: to the next byte only)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (N, bits), got shape {codes.shape}")
    bits = codes.shape[1]
    multiple = pad_to or 8
    padded_bits = -(-bits // multiple) * multiple
    if padded_bits > bits:
        codes = np.concatenate([codes, np.zeros((len(codes), padded_bits - bits), np.uint8)], axis=1)
    return np.packbits(codes, axis=1)


class BinaryIndex:
    """faiss ``IndexBinaryFlat`` over packed codes (exhaustive Hamming search)."""

    def __init__(self, db_codes: np.ndarray, pad_to: int | None = WORD_BITS):
        import faiss
        self.pad_to = pad_to
        packed = pack_codes(db_codes, pad_to)
        self.code_bits = packed.shape[1] * 8
        self.index = faiss.IndexBinaryFlat(self.code_bits)
        self.index.add(packed)

    def search(self, query_codes: np.ndarray, k: int):
        """(distances, database indices), each (Q, k)."""
        return self.index.search(pack_codes(query_codes, self.pad_to), k)

    def search_packed(self, packed: np.ndarray, k: int):
        return self.index.search(packed, k)

    def prepare(self, query_codes: np.ndarray) -> np.ndarray:
        return pack_codes(query_codes, self.pad_to)


class FloatIndex:
    """faiss ``IndexFlatIP`` over float32 vectors (exhaustive inner-product search)."""

    def __init__(self, db_vectors: np.ndarray):
        import faiss
        vectors = np.ascontiguousarray(db_vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int):
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def search_packed(self, queries: np.ndarray, k: int):
        return self.index.search(queries, k)

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(queries, dtype=np.float32)


def query_latency(index, queries: np.ndarray, k: int, min_queries: int = 5,
                  max_queries: int = 200, budget_s: float = 1.0) -> dict:
    """Per-query latency at batch size 1 on one thread: median and p95 in milliseconds."""
    import faiss
    prepared = index.prepare(queries)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search_packed(prepared[:1], k)  # warm-up
        times, started = [], time.perf_counter()
        for i in range(min(max_queries, len(prepared))):
            tick = time.perf_counter()
            index.search_packed(prepared[i:i + 1], k)
            times.append(time.perf_counter() - tick)
            if len(times) >= min_queries and time.perf_counter() - started > budget_s:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    times_ms = sorted(1000 * t for t in times)
    return {"median_ms": statistics.median(times_ms),
            "p95_ms": times_ms[min(len(times_ms) - 1, int(round(0.95 * (len(times_ms) - 1))))],
            "queries": len(times_ms)}


def throughput(index, queries: np.ndarray, k: int, threads: int | None = None) -> dict:
    """Queries per second for one batch of all ``queries`` (``threads``: faiss's default)."""
    import faiss
    prepared = index.prepare(queries)
    default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or default)
    try:
        index.search_packed(prepared[:1], k)  # warm-up
        tick = time.perf_counter()
        index.search_packed(prepared, k)
        seconds = time.perf_counter() - tick
    finally:
        faiss.omp_set_num_threads(default)
    return {"qps": len(prepared) / seconds, "batch": len(prepared), "threads": threads or default}
