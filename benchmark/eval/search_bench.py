"""``perf``'s search section 4: exact top-k by multi-index hashing (:class:`.search.MultiIndexHash`)
against faiss ``IndexBinaryFlat``, both on one thread over one batch of queries, at several
database sizes and code lengths, for random codes and for trained codes.

Trained codes come from a run's ``codes.npz`` (``perf --codes FILE[,FILE]``: its database
codes replicated cyclically to the database size, its query codes as queries; a file is used
at its own bit length); a bit length without a file uses generated class-clustered codes
(100 class centres, each bit flipped with probability 0.05), and the line says which.
Both searches' top-k distances are compared query by query.
"""
from __future__ import annotations

import time

import numpy as np

from .search import BinaryIndex, MultiIndexHash


def code_sources(bits: int, files: dict, n_queries: int, seed: int = 0) -> dict:
    """name -> (database pool, queries) of ``bits``-bit codes."""
    rng = np.random.default_rng(seed)
    sources = {"random": (None, rng.integers(0, 2, (n_queries, bits), dtype=np.uint8))}
    if bits in files:
        stored = np.load(files[bits])
        sources[f"trained ({files[bits]})"] = (stored["db_codes"], stored["query_codes"][:n_queries])
    else:
        centres = rng.integers(0, 2, (100, bits), dtype=np.uint8)
        pool = centres[rng.integers(0, 100, 200_000)] ^ (rng.random((200_000, bits)) < 0.05)
        sources["class-clustered (generated)"] = (pool[n_queries:], pool[:n_queries])
    return sources


def database(pool, n: int, bits: int, seed: int = 1) -> np.ndarray:
    """``n`` codes: ``pool`` replicated cyclically, or random codes without a pool."""
    if pool is None:
        return np.random.default_rng(seed).integers(0, 2, (n, bits), dtype=np.uint8)
    return np.asarray(pool, dtype=np.uint8)[np.arange(n) % len(pool)]


def timed_search(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """(queries per second, distances) of one batch on one faiss thread."""
    import faiss
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:1], k)  # warm-up
        tick = time.perf_counter()
        distances = index.search(queries, k)[0]
        return len(queries) / (time.perf_counter() - tick), np.asarray(distances)
    finally:
        faiss.omp_set_num_threads(threads)


def compare_search(sizes=(100_000, 1_000_000), bit_lengths=(32, 64), files: dict | None = None,
                   n_queries: int = 1000, k: int = 100, log=print) -> list[dict]:
    """Print and return one row per (bits, code source, database size)."""
    log(f"\n4. Exact top-{k} search past the flat index: multi-index hashing over the distinct "
        f"codes with the pigeonhole radius guarantee (benchmark.eval.search.MultiIndexHash) vs "
        f"faiss IndexBinaryFlat; one batch of {n_queries:,} queries, one thread each")
    rows = []
    for bits in bit_lengths:
        for name, (pool, queries) in code_sources(bits, files or {}, n_queries).items():
            for n in sizes:
                db = database(pool, n, bits)
                flat_qps, flat_d = timed_search(BinaryIndex(db), queries, k)
                tick = time.perf_counter()
                mih = MultiIndexHash(db)
                build = time.perf_counter() - tick
                mih_qps, mih_d = timed_search(mih, queries, k)
                row = {"bits": bits, "codes": name, "db": n, "distinct": len(mih.words),
                       "flat_qps": flat_qps, "mih_qps": mih_qps, "build_s": build,
                       "mode": "hash tables" if mih.tables else "scan of distinct codes",
                       "identical": bool(np.array_equal(flat_d, mih_d))}
                rows.append(row)
                log(f"   {bits}b {name}, {n:,} codes ({row['distinct']:,} distinct, "
                    f"{row['mode']}): flat {flat_qps:,.0f} q/s, multi-index {mih_qps:,.0f} q/s "
                    f"({mih_qps / flat_qps:.1f}x; built in {build:.1f} s); identical top-{k} "
                    f"distances: {'yes' if row['identical'] else 'NO'}")
    return rows


def files_by_bits(paths: str | None) -> dict:
    """``--codes FILE[,FILE]`` -> {bits: file}: runs' ``codes.npz`` (``db_codes``, ``query_codes``)."""
    from ..errors import BenchmarkError
    files = {}
    for path in filter(None, (paths or "").split(",")):
        try:
            with np.load(path) as stored:
                files[int(stored["db_codes"].shape[1])] = path
        except (OSError, KeyError, ValueError) as exc:
            raise BenchmarkError(f"--codes {path}: not a run's codes.npz ({exc})") from None
    return files
