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


SCAN_LIMIT = 1 << 15  # distinct codes up to which a scan of them beats hashing
MASKS: dict = {}      # (substring bits, radius) -> every mask of that many set bits
PROBE = 16            # queries of a batch after which mostly failing tables are skipped


def code_words(codes: np.ndarray) -> np.ndarray:
    """(N, bits <= 64) 0/1 codes -> (N,) uint64, the first bit the most significant."""
    return pack_codes(codes, WORD_BITS).view(">u8").astype(np.uint64).ravel()


def flip_masks(length: int, radius: int) -> np.ndarray:
    """Every ``length``-bit integer with exactly ``radius`` set bits."""
    if (length, radius) not in MASKS:
        values = np.arange(1 << length, dtype=np.int64)
        MASKS[length, radius] = values[np.bitwise_count(values) == radius]
    return MASKS[length, radius]


def concat_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(starts, stops)])`` without a loop."""
    lengths = stops - starts
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    if not len(lengths):
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())


class MultiIndexHash:
    """Exact top-k Hamming search for codes of up to 64 bits, as in faiss
    ``IndexBinaryMultiHash`` with exact re-ranking (Norouzi, Punjani & Fleet, CVPR 2012).

    The database is stored as its distinct codes with their multiplicities. With few distinct
    codes (``scan_limit``) they are scanned (faiss ``IndexBinaryFlat``). Otherwise each code is
    cut into m substrings of at most ``substring_bits`` bits, each with a table from
    substring value to the distinct codes holding it; a query looks up every substring
    value within r flipped bits, r = 0, 1, ..., and re-ranks the candidates by their full
    distance. By the pigeonhole principle every code within ``m (r + 1) - 1`` of the query
    has been a candidate once radius r is done, so the top k are exact as soon as k items lie
    within that radius; a query whose candidates pass ``max_fraction`` of the distinct codes
    first falls back to the flat scan, and so does the rest of a batch once most of its first
    ``PROBE`` queries did (codes too spread out for the tables, e.g. random ones)."""

    def __init__(self, db_codes: np.ndarray, substring_bits: int = 16,
                 scan_limit: int = SCAN_LIMIT, max_fraction: float = 0.01):
        import faiss
        codes = np.asarray(db_codes, dtype=np.uint8)
        self.bits = codes.shape[1]
        if self.bits > WORD_BITS:
            raise ValueError(f"multi-index hashing takes codes of up to {WORD_BITS} bits")
        words, inverse, self.counts = np.unique(code_words(codes), return_inverse=True,
                                                return_counts=True)
        self.words, self.size = words, len(codes)
        self.items = np.argsort(inverse, kind="stable")  # item ids grouped by distinct code
        self.first = np.cumsum(self.counts) - self.counts
        self.flat = faiss.IndexBinaryFlat(WORD_BITS)
        self.flat.add(np.ascontiguousarray(words.astype(">u8")).view(np.uint8).reshape(-1, 8))
        self.max_candidates = max_fraction * len(words)
        self.tables = [] if len(words) <= scan_limit else self._tables(substring_bits)
        self.stamp, self.tag = np.zeros(len(words), dtype=np.int64), 0

    def _tables(self, substring_bits: int) -> list:
        """Per substring: (shift, bits, distinct ids sorted by value, offsets by value)."""
        m = -(-self.bits // substring_bits)
        edges = np.linspace(0, self.bits, m + 1).round().astype(int)
        tables = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            shift, length = WORD_BITS - hi, hi - lo
            keys = ((self.words >> np.uint64(shift)) & np.uint64((1 << length) - 1)).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=1 << length))])
            tables.append((shift, length, np.argsort(keys, kind="stable"), offsets))
        return tables

    def _expand(self, ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items of distinct codes ``ids`` at ``dists`` (sorted by distance)."""
        order = np.argsort(dists, kind="stable")
        ids, dists = ids[order], dists[order]
        take = int(np.searchsorted(np.cumsum(self.counts[ids]), k)) + 1
        ids, dists = ids[:take], dists[:take]
        items = self.items[concat_ranges(self.first[ids], self.first[ids] + self.counts[ids])]
        return np.repeat(dists, self.counts[ids])[:k], items[:k]

    def _hashed(self, word: np.uint64, k: int):
        """(distances, items) of one query by the tables, or None past ``max_candidates``."""
        self.tag += 1
        found_ids, found_dists, count = [], [], 0
        values = [int((word >> np.uint64(s)) & np.uint64((1 << n) - 1)) for s, n, _, _ in self.tables]
        for radius in range(max(n for _, n, _, _ in self.tables) + 1):
            for value, (_, length, ids, offsets) in zip(values, self.tables):
                keys = value ^ flip_masks(length, radius) if radius <= length else ()
                if not len(keys):
                    continue
                candidates = ids[concat_ranges(offsets[keys], offsets[keys + 1])]
                new = candidates[self.stamp[candidates] != self.tag]
                self.stamp[new] = self.tag
                found_ids.append(new)
                found_dists.append(np.bitwise_count(self.words[new] ^ word).astype(np.int32))
                count += len(new)
            ids_all, dists_all = np.concatenate(found_ids), np.concatenate(found_dists)
            guaranteed = len(self.tables) * (radius + 1) - 1
            if self.counts[ids_all[dists_all <= guaranteed]].sum() >= k:
                return self._expand(ids_all, dists_all, k)
            if count > self.max_candidates:
                return None
        return self._expand(ids_all, dists_all, k)

    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) int32, database indices (Q, k)); k is capped at the database size."""
        words = code_words(query_codes)
        k = min(k, self.size)
        dists = np.empty((len(words), k), dtype=np.int32)
        items = np.empty((len(words), k), dtype=np.int64)
        flat = []
        for i, word in enumerate(words):
            hashing = self.tables and not (i >= PROBE and 2 * len(flat) > i)
            hit = self._hashed(word, k) if hashing else None
            if hit is None:
                flat.append(i)
            else:
                dists[i], items[i] = hit
        if flat:
            packed = np.ascontiguousarray(words[flat].astype(">u8")).view(np.uint8).reshape(-1, 8)
            scanned_d, scanned_ids = self.flat.search(packed, min(k, len(self.words)))
            for row, d, ids in zip(flat, scanned_d, scanned_ids):
                dists[row], items[row] = self._expand(ids, d, k)
        return dists, items

    def prepare(self, query_codes: np.ndarray) -> np.ndarray:
        return np.asarray(query_codes, dtype=np.uint8)

    def search_packed(self, queries: np.ndarray, k: int):
        return self.search(queries, k)
