"""benchmark.search: packing/padding keeps Hamming distances, faiss search is exact."""
import numpy as np
import pytest

from benchmark.eval import search


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
