"""benchmark.search: packing/padding keeps Hamming distances, faiss search is exact; multi-index
hashing gives the flat index's top-k distances on every path (hash tables, early exit, flat
fallback, scan of distinct codes), and the perf section that compares them."""
import numpy as np
import pytest

from benchmark.errors import BenchmarkError
from benchmark.eval import search
from benchmark.eval.search import BinaryIndex, MultiIndexHash, concat_ranges, flip_masks
from benchmark.eval.search_bench import compare_search, files_by_bits


def hamming(q, d):
    return (q[:, None, :] != d[None, :, :]).sum(-1)


def test_pack_codes_pads_with_zero_bits_to_whole_words():
    codes = np.array([[1, 0, 1] + [0] * 44 + [1]], dtype=np.uint8)  # 48 bits
    assert search.pack_codes(codes).shape == (1, 8)  # 64 bits
    assert search.pack_codes(codes, pad_to=None).shape == (1, 6)
    assert search.pack_codes(codes)[0, 6:].tolist() == [0, 0]
    assert search.pack_codes(np.ones((2, 65), np.uint8)).shape == (2, 16)
    with pytest.raises(ValueError, match="must be"):
        search.pack_codes(np.zeros(8, np.uint8))


@pytest.mark.parametrize("bits,pad", [(48, 64), (48, None), (64, 64), (12, 64), (130, 64)])
def test_binary_index_returns_the_exact_nearest_distances(bits, pad):
    rng = np.random.default_rng(bits)
    db = rng.integers(0, 2, (500, bits), dtype=np.uint8)
    q = rng.integers(0, 2, (20, bits), dtype=np.uint8)
    distances, indices = search.BinaryIndex(db, pad_to=pad).search(q, 10)
    truth = hamming(q, db)
    assert np.array_equal(distances, np.sort(truth, axis=1)[:, :10])
    assert np.array_equal(np.take_along_axis(truth, indices, 1), distances)


def test_float_index_returns_the_largest_inner_products():
    rng = np.random.default_rng(3)
    db, q = rng.standard_normal((300, 32)), rng.standard_normal((5, 32))
    scores, indices = search.FloatIndex(db).search(q, 7)
    truth = q @ db.T
    assert np.array_equal(indices, np.argsort(-truth, axis=1)[:, :7])
    assert scores == pytest.approx(np.sort(truth, axis=1)[:, ::-1][:, :7], rel=1e-5)


def test_latency_and_throughput_report_their_settings():
    rng = np.random.default_rng(4)
    index = search.BinaryIndex(rng.integers(0, 2, (200, 48), dtype=np.uint8))
    queries = rng.integers(0, 2, (30, 48), dtype=np.uint8)
    latency = search.query_latency(index, queries, 5, min_queries=8, budget_s=0.0)
    assert latency["queries"] == 8 and 0 < latency["median_ms"] <= latency["p95_ms"]
    rate = search.throughput(index, queries, 5, threads=1)
    assert rate["batch"] == 30 and rate["threads"] == 1 and rate["qps"] > 0




def clustered(rng, n, bits, classes=20, flip=0.08):
    centres = rng.integers(0, 2, (classes, bits), dtype=np.uint8)
    return centres[rng.integers(0, classes, n)] ^ (rng.random((n, bits)) < flip).astype(np.uint8)


def true_distances(db, queries, items):
    return (db[items] != queries[:, None]).sum(-1)


@pytest.mark.parametrize("bits", [12, 32, 48, 64])
@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
def test_same_top_k_distances_as_the_flat_index(bits, kind):
    rng = np.random.default_rng(bits)
    if kind == "random":
        codes = rng.integers(0, 2, (6040, bits), dtype=np.uint8)
    elif kind == "clustered":
        codes = clustered(rng, 6040, bits)
    else:
        codes = clustered(rng, 300, bits)[rng.integers(0, 300, 6040)]
    db, queries = codes[:6000], np.concatenate([codes[6000:], codes[:5]])  # some in the database
    mih = MultiIndexHash(db, scan_limit=100)  # hash tables even for few distinct codes
    for k in (1, 7, 100):
        expected, _ = BinaryIndex(db).search(queries, k)
        distances, items = mih.search(queries, k)
        assert np.array_equal(distances, expected)
        assert np.array_equal(true_distances(db, queries, items), distances)
        assert all(len(set(row)) == k for row in items)  # k different database items


def test_flat_fallback_and_distinct_scan_are_exact():
    rng = np.random.default_rng(5)
    db, queries = rng.integers(0, 2, (4000, 64), dtype=np.uint8), rng.integers(0, 2, (20, 64), dtype=np.uint8)
    expected, _ = BinaryIndex(db).search(queries, 50)
    fallback = MultiIndexHash(db, scan_limit=10, max_fraction=0.001)  # every query falls back
    scan = MultiIndexHash(db)  # 4,000 distinct codes: scanned
    assert fallback.tables and not scan.tables
    for index in (fallback, scan):
        distances, items = index.search(queries, 50)
        assert np.array_equal(distances, expected)
        assert np.array_equal(true_distances(db, queries, items), distances)


def test_k_above_the_database_size_returns_every_item():
    db = np.array([[0, 0, 1], [0, 0, 1], [1, 1, 1]], dtype=np.uint8)
    distances, items = MultiIndexHash(db).search(np.array([[0, 0, 0]], dtype=np.uint8), 10)
    assert distances.tolist() == [[1, 1, 3]] and sorted(items[0][:2]) == [0, 1] and items[0][2] == 2


def test_helpers():
    assert concat_ranges(np.array([3, 0, 7]), np.array([5, 0, 9])).tolist() == [3, 4, 7, 8]
    masks = flip_masks(5, 2)
    assert len(masks) == 10 and all(bin(int(m)).count("1") == 2 for m in masks)


def test_perf_section_reports_identical_distances(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "codes.npz"
    np.savez(path, db_codes=clustered(rng, 700, 32), query_codes=clustered(rng, 30, 32))
    lines = []
    rows = compare_search((1000, 3000), (32, 64), files_by_bits(str(path)), 20, 10, lines.append)
    assert {r["codes"] for r in rows if r["bits"] == 32} == {"random", f"trained ({path})"}
    assert {r["codes"] for r in rows if r["bits"] == 64} == {"random", "class-clustered (generated)"}
    assert all(r["identical"] for r in rows) and len(lines) == 1 + len(rows)
    with pytest.raises(BenchmarkError):
        files_by_bits(str(tmp_path / "missing.npz"))
