"""Similarity-computation speed-up of binary codes over real-valued features, as database
size grows (thesis-ddl's claim: 414x).

    python benchmarks/binary_vs_real.py [--bits 32] [--dim 896] [--sizes 2999,100000,1000000]

Random codes and unit vectors (search time does not depend on their values); exact top-100
search with faiss, one query at a time on one thread (``search.query_latency``): Hamming on
codes padded to 64 bits (``IndexBinaryFlat``) against inner product on float32 vectors
(``IndexFlatIP``). The ratio is float time / binary time from the same run. The defaults are
thesis-ddl's 32 bits and its 896-d multi-scale feature on cub100.
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmark.eval import search

K = 100


def measure(n_db: int, bits: int, dim: int, rng, queries: int = 50) -> dict:
    codes = search.BinaryIndex(rng.integers(0, 2, (n_db, bits), dtype=np.uint8))
    binary = search.query_latency(codes, rng.integers(0, 2, (queries, bits), dtype=np.uint8),
                                  min(K, n_db), budget_s=1.0)
    del codes
    vectors = rng.standard_normal((n_db, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    floats = search.FloatIndex(vectors)
    del vectors
    real = search.query_latency(floats, rng.standard_normal((queries, dim), dtype=np.float32),
                                min(K, n_db), budget_s=1.0)
    return {"db": n_db, "binary_ms": binary["median_ms"], "float_ms": real["median_ms"],
            "ratio": real["median_ms"] / binary["median_ms"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--dim", type=int, default=896)
    parser.add_argument("--sizes", default="2999,100000,1000000")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"| database | {args.bits}-bit Hamming ms/query | {args.dim}-d float ms/query | float / binary |")
    print("|---|---|---|---|")
    for n_db in (int(s) for s in args.sizes.split(",")):
        row = measure(n_db, args.bits, args.dim, rng)
        print(f"| {row['db']:,} | {row['binary_ms']:.3f} | {row['float_ms']:.3f} | {row['ratio']:.0f}x |")


if __name__ == "__main__":
    main()
