import numpy as np
import pytest
import torch

from benchmark.evaluation import binarise, evaluate_codes, hamming_distances


def brute_force_ap(dist_row, relevant_row):
    order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if relevant_row[j]:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def test_binarise_maps_zero_to_one():
    codes = binarise(torch.tensor([[-1.0, 0.0, 2.0], [-0.0, -1e-9, 1e-9]]))
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[0, 1, 1], [1, 0, 1]]


def test_hamming_distances_exact():
    rng = np.random.default_rng(0)
    q, d = rng.integers(0, 2, (7, 48), dtype=np.uint8), rng.integers(0, 2, (11, 48), dtype=np.uint8)
    expected = (q[:, None, :] != d[None, :, :]).sum(-1)
    assert np.array_equal(hamming_distances(q, d), expected)


def test_map_hand_computed_with_index_tie_break():
    # one query, 4-bit codes; database distances 1, 0, 1, 2; relevant items 0 and 3.
    query = np.array([[0, 0, 0, 0]], dtype=np.uint8)
    db = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.uint8)
    # ranking by (distance, index): 1, 0, 2, 3 -> relevant at ranks 2 and 4
    metrics = evaluate_codes(query, db, np.array([5]), np.array([5, 1, 1, 5]))
    assert metrics["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics["p@10"] == pytest.approx(2 / 10)  # P@k divides by k, even past the database


def test_map_matches_brute_force_on_random_codes():
    rng = np.random.default_rng(1)
    q, d = rng.integers(0, 2, (40, 12), dtype=np.uint8), rng.integers(0, 2, (300, 12), dtype=np.uint8)
    ql, dl = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
    dist = (q[:, None, :] != d[None, :, :]).sum(-1)
    expected = np.mean([brute_force_ap(dist[i], dl == ql[i]) for i in range(40)])
    metrics = evaluate_codes(q, d, ql, dl, chunk=7)
    assert metrics["map"] == pytest.approx(expected, abs=1e-12)


def test_query_without_relevant_item_counts_as_zero():
    q = np.zeros((2, 4), dtype=np.uint8)
    d = np.zeros((3, 4), dtype=np.uint8)
    metrics = evaluate_codes(q, d, np.array([0, 9]), np.array([0, 1, 0]))
    assert metrics["queries_without_relevant"] == 1
    assert metrics["map"] == pytest.approx((1 + 2 / 3) / 2 / 2)
